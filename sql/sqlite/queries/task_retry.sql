-- A failed or canceled task runs again from a clean count; last_error stays until the next attempt.
UPDATE tasks
SET status = 'pending', attempts = 0, run_at = :now, cancel_requested = 0, result = NULL,
    started_at = NULL, completed_at = NULL, updated_at = :now
WHERE id = :id AND status IN ('failed', 'canceled')
RETURNING *
