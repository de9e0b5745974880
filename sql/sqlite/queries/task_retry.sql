-- A failed or canceled task runs again from a clean count; last_error stays until the next attempt.
-- Its checkpoint (and the owner's messages behind it) stay unless :reset asks otherwise.
UPDATE tasks
SET status = 'pending', attempts = 0, run_at = :now, cancel_requested = 0, result = NULL,
    started_at = NULL, completed_at = NULL, updated_at = :now, wake_reason = NULL,
    checkpoint = CASE WHEN :reset = 1 THEN NULL ELSE checkpoint END,
    inbox_cursor = CASE WHEN :reset = 1 THEN 0 ELSE inbox_cursor END
WHERE id = :id AND status IN ('failed', 'canceled')
RETURNING *
