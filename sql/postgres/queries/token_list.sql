-- Every token, oldest first: its id, its user, and the start of its hash (never the token).
SELECT t.id, u.name, u.is_admin, t.created_at, substr(t.token_hash, 1, 12) AS hash_prefix
FROM tokens t JOIN users u ON u.id = t.user_id
ORDER BY t.id
