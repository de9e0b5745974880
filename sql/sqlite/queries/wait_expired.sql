-- Waits that timed out, the :limit oldest at most: the task is runnable again at once, and its
-- next attempt is told why. LIMIT is a subquery's, as in task_claim.sql.
UPDATE tasks
SET status = 'pending', wake_reason = 'timeout', wait_until = NULL, run_at = :now, updated_at = :now
WHERE rowid IN (SELECT rowid FROM tasks INDEXED BY tasks_waiting
                WHERE status = 'waiting' AND wait_until <= :now
                ORDER BY wait_until
                LIMIT (SELECT :limit))
RETURNING *
