INSERT INTO stream_tokens (token_hash, task_id, expires_at) VALUES (:hash, :task_id, :expires_at)
