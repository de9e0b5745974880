-- The task and attempt a token was issued for.
SELECT task_id, attempt FROM task_tokens WHERE token_hash = :token_hash
