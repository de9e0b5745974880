-- Queue $1 as a limited claim needs it: whether it is paused, its running tasks (all
-- processes), and its token bucket as last stored (NULLs when there is none).
SELECT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused) AS paused,
       (SELECT count(*) FROM tasks WHERE status = 'running' AND queue = $1) AS running,
       b.tokens, b.updated_at
FROM (SELECT 1) AS one
LEFT JOIN queue_tokens b ON b.queue = $1
