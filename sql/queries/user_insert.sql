INSERT INTO users (name, token_hash, is_admin, created_at)
VALUES (:name, :token_hash, :is_admin, :now)
