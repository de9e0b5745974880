-- The best :n runnable parked tasks of key :key in queue :queue, in claim order. LIMIT is a
-- subquery for the reason given in task_claim.sql.
SELECT rowid, priority, run_at FROM tasks INDEXED BY tasks_key_parked
WHERE queue = :queue AND status = 'pending' AND parked = 1 AND concurrency_key = :key
  AND run_at <= :now
ORDER BY priority DESC, run_at, rowid
LIMIT (SELECT :n)
