-- A token of a user, stored only as its hash.
INSERT INTO tokens (user_id, token_hash, created_at)
VALUES (:user_id, :token_hash, :now)
