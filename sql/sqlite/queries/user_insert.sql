-- A new user: a token user (:issuer NULL, unique name) or a JWT user (unique issuer and name).
-- The unique indexes refuse a second user of the same identity.
INSERT INTO users (name, issuer, is_admin, created_at)
VALUES (:name, :issuer, :is_admin, :now)
RETURNING id
