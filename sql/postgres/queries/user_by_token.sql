-- The user a token hash names (revoked tokens are deleted, so they name no one).
SELECT u.id, u.name, u.is_admin
FROM tokens t JOIN users u ON u.id = t.user_id
WHERE t.token_hash = $1
