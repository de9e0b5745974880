-- Waits that timed out at $1, the $2 oldest at most: the task is runnable again at once, its
-- next attempt told why. SKIP LOCKED: a row another transaction holds (a message waking it, a
-- cancel) is being decided right now.
UPDATE tasks
SET status = 'pending', wake_reason = 'timeout', wait_until = NULL, run_at = $1, updated_at = $1
WHERE id IN (SELECT id FROM tasks
             WHERE status = 'waiting' AND wait_until <= $1
             ORDER BY wait_until
             LIMIT $2
             FOR UPDATE SKIP LOCKED)
  AND status = 'waiting'
RETURNING *
