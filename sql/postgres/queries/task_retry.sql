-- A failed or canceled task runs again from a clean count; last_error stays until the next
-- attempt. Its checkpoint (and the owner's messages behind it) stay unless $3 asks otherwise.
-- $1 id, $2 now, $3 reset the checkpoint.
UPDATE tasks
SET status = 'pending', attempts = 0, run_at = $2, cancel_requested = false, result = NULL,
    started_at = NULL, completed_at = NULL, updated_at = $2, wake_reason = NULL,
    checkpoint = CASE WHEN $3::bool THEN NULL ELSE checkpoint END,
    inbox_cursor = CASE WHEN $3::bool THEN 0 ELSE inbox_cursor END
WHERE id = $1 AND status IN ('failed', 'canceled')
RETURNING *
