-- A task whose worker died after a cancel was asked for ends canceled, not retried.
UPDATE tasks
SET status = 'canceled', lease_owner = NULL, lease_expires_at = NULL,
    last_error = :error, completed_at = :now, updated_at = :now
WHERE status = 'running' AND lease_expires_at < :now AND cancel_requested = 1
RETURNING *
