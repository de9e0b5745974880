-- Claim up to $5 runnable tasks of the limited queue $4 (no per-key limit) for worker $1 at $2
-- with leases of $3 ms, best first; the admission lock is held (see task_claim.sql).
WITH picked AS (
    SELECT t.id FROM tasks t
    WHERE t.queue = $4 AND t.status = 'pending' AND t.run_at <= $2
    ORDER BY t.priority DESC, t.run_at, t.id
    LIMIT $5
    FOR UPDATE OF t SKIP LOCKED)
UPDATE tasks AS t
SET status = 'running',
    attempts = t.attempts + 1,
    lease_owner = $1,
    lease_expires_at = $2::int8 + $3::int8,
    started_at = $2,
    updated_at = $2
FROM picked
WHERE t.id = picked.id
RETURNING t.*
