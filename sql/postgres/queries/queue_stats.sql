-- Counts by queue and status, each part read from the index made for its status: pending from
-- tasks_claim, with how many are due at $1 and the oldest due run_at; running from tasks_lease;
-- finished from tasks_finished.
SELECT queue, 'pending' AS status, count(*) AS n,
       count(*) FILTER (WHERE run_at <= $1) AS due,
       min(run_at) FILTER (WHERE run_at <= $1) AS oldest_due
FROM tasks WHERE status = 'pending'
GROUP BY queue
UNION ALL
SELECT queue, 'running', count(*), NULL, NULL
FROM tasks WHERE status = 'running'
GROUP BY queue
UNION ALL
SELECT queue, 'waiting', count(*), NULL, NULL
FROM tasks WHERE status = 'waiting'
GROUP BY queue
UNION ALL
SELECT queue, status, count(*), NULL, NULL
FROM tasks WHERE completed_at IS NOT NULL AND status NOT IN ('pending', 'running')
GROUP BY status, queue
