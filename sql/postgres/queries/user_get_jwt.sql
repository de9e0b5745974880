-- The user of a JWT identity: the issuer and the user claim's value.
SELECT id, name, is_admin FROM users WHERE issuer = $1 AND name = $2
