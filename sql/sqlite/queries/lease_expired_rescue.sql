-- A lost lease with attempts left: the task is runnable again at once.
UPDATE tasks
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    last_error = :error, run_at = :now, updated_at = :now
WHERE status = 'running' AND lease_expires_at < :now AND attempts < max_attempts
RETURNING *
