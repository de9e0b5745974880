DELETE FROM tokens WHERE user_id = (SELECT id FROM users WHERE name = $1 AND issuer IS NULL)
