-- Running tasks whose lease ran out before $1, the $2 that ran out first at most, locked for
-- their rescue. SKIP LOCKED: a row another transaction holds is being finished or heartbeated
-- right now and is not ours to judge.
SELECT id, attempts, max_attempts, cancel_requested FROM tasks
WHERE status = 'running' AND lease_expires_at < $1
ORDER BY lease_expires_at, id
LIMIT $2
FOR UPDATE SKIP LOCKED
