-- Counts by queue and status (an index scan, no sort), plus for pending tasks how many are
-- due now and the oldest due run_at. The CASE columns are NULL for other statuses.
SELECT queue,
       status,
       count(*) AS n,
       CASE WHEN status = 'pending' THEN sum(run_at <= :now) END AS due,
       CASE WHEN status = 'pending' THEN min(CASE WHEN run_at <= :now THEN run_at END) END AS oldest_due
FROM tasks
GROUP BY queue, status
