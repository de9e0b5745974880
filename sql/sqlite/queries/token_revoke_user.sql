-- Revokes every token of the token user :name.
DELETE FROM tokens
WHERE user_id = (SELECT id FROM users WHERE name = :name AND issuer IS NULL)
