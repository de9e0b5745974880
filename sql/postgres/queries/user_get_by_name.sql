-- The token user of a name (JWT users are another namespace and never match).
SELECT id, name, is_admin FROM users WHERE name = $1 AND issuer IS NULL
