-- A failed or canceled task runs again from a clean count; last_error stays until the next
-- attempt. $1 id, $2 now.
UPDATE tasks
SET status = 'pending', attempts = 0, run_at = $2, cancel_requested = false, result = NULL,
    started_at = NULL, completed_at = NULL, updated_at = $2
WHERE id = $1 AND status IN ('failed', 'canceled')
RETURNING *
