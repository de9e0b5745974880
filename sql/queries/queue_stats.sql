-- Counts by queue and status; pending split into due now and scheduled for later.
SELECT queue,
       status,
       CASE WHEN status = 'pending' AND run_at > :now THEN 1 ELSE 0 END AS scheduled,
       count(*) AS n,
       min(CASE WHEN status = 'pending' AND run_at <= :now THEN run_at END) AS oldest_due
FROM tasks
GROUP BY queue, status, scheduled
