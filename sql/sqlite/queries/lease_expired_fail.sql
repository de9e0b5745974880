-- A lost lease counts as a failed attempt: with no attempts left the task is failed.
UPDATE tasks
SET status = 'failed', lease_owner = NULL, lease_expires_at = NULL,
    last_error = :error, completed_at = :now, updated_at = :now
WHERE status = 'running' AND lease_expires_at < :now AND attempts >= max_attempts
RETURNING *
