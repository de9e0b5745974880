-- Claim runnable tasks for worker $1 at $2 with leases of $3 ms: from each queue of $4 at most
-- the matching count of $5, in that order of queues, $6 in all; within a queue highest priority
-- first, then earliest run_at, then id. Paused queues are skipped. One statement: rows are
-- locked as they are taken (FOR UPDATE SKIP LOCKED, so claimers never wait for each other or
-- take one task twice), and the outer LIMIT stops taking at the total. Each claim starts a new
-- attempt, whose number is the fencing token of every later write of that worker.
WITH picked AS (
    SELECT c.id
    FROM unnest($4::text[], $5::int8[]) WITH ORDINALITY AS q(name, lim, ord)
    CROSS JOIN LATERAL (
        SELECT t.id FROM tasks t
        WHERE t.queue = q.name AND t.status = 'pending' AND t.run_at <= $2
          AND NOT EXISTS (SELECT 1 FROM queues p WHERE p.name = q.name AND p.paused)
        ORDER BY t.priority DESC, t.run_at, t.id
        LIMIT q.lim
        FOR UPDATE OF t SKIP LOCKED) AS c
    LIMIT $6)
UPDATE tasks AS t
SET status = 'running',
    attempts = t.attempts + 1,
    lease_owner = $1,
    lease_expires_at = $2 + $3,
    started_at = $2,
    inbox_read = t.inbox_cursor,
    inbox_claimed = t.inbox_last,
    wait_until = NULL,
    updated_at = $2
FROM picked
WHERE t.id = picked.id
RETURNING t.*
