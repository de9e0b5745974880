-- Waits that timed out at $1: the task is runnable again at once, its next attempt told why.
UPDATE tasks
SET status = 'pending', wake_reason = 'timeout', wait_until = NULL, run_at = $1, updated_at = $1
WHERE status = 'waiting' AND wait_until <= $1
RETURNING *
