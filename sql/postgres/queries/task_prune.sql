-- Delete up to $3 tasks that ended with $1 before $2 (messages and task tokens go with them).
-- SKIP LOCKED: a row another transaction holds (a retry) is left for the next pass.
DELETE FROM tasks
WHERE id IN (SELECT id FROM tasks
             WHERE status = $1 AND completed_at IS NOT NULL AND completed_at < $2
             LIMIT $3
             FOR UPDATE SKIP LOCKED)
