INSERT INTO tokens (user_id, token_hash, created_at) VALUES ($1, $2, $3)
