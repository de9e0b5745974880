-- Waits that timed out: the task is runnable again at once, and its next attempt is told why.
UPDATE tasks
SET status = 'pending', wake_reason = 'timeout', wait_until = NULL, run_at = :now, updated_at = :now
WHERE status = 'waiting' AND wait_until <= :now
RETURNING *
