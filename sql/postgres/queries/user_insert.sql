-- A new user: a token user ($2 NULL, unique name) or a JWT user (unique issuer and name).
-- Nothing when the identity exists already (made by another process meanwhile).
INSERT INTO users (name, issuer, is_admin, created_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING id
