-- $1 hash, $2 task, $3 expires at.
INSERT INTO stream_tokens (token_hash, task_id, expires_at) VALUES ($1, $2, $3)
