-- A per-attempt token for a webhook receiver (stored hashed).
INSERT INTO task_tokens (token_hash, task_id, attempt, created_at)
VALUES (:token_hash, :task_id, :attempt, :now)
