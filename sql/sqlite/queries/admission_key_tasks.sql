-- The best :n runnable tasks of key :key in queue :queue, in claim order. LIMIT is a subquery
-- for the reason given in task_claim.sql.
SELECT rowid, priority, run_at FROM tasks INDEXED BY tasks_key_pending
WHERE queue = :queue AND status = 'pending' AND concurrency_key IS NOT NULL
  AND concurrency_key = :key AND run_at <= :now
ORDER BY priority DESC, run_at, rowid
LIMIT (SELECT :n)
