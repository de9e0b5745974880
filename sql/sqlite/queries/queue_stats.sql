-- Counts by queue and status, each part read from the index made for its status (no table
-- scan): pending from tasks_claim and tasks_key_parked (0015_parked.sql), with how many are due
-- now and the oldest due run_at; running from tasks_lease; finished from tasks_finished.
SELECT queue, 'pending' AS status, count(*) AS n, sum(run_at <= :now) AS due,
       min(CASE WHEN run_at <= :now THEN run_at END) AS oldest_due
FROM (SELECT queue, run_at FROM tasks WHERE status = 'pending' AND parked IS NULL
      UNION ALL
      SELECT queue, run_at FROM tasks WHERE status = 'pending' AND parked = 1)
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
FROM tasks WHERE completed_at IS NOT NULL AND status <> 'pending' AND status <> 'running'
GROUP BY status, queue
