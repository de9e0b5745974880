-- The best :n runnable tasks without a concurrency key in queue :queue, in claim order.
SELECT rowid, priority, run_at FROM tasks INDEXED BY tasks_claim
WHERE queue = :queue AND status = 'pending' AND run_at <= :now AND concurrency_key IS NULL
ORDER BY priority DESC, run_at, rowid
LIMIT (SELECT :n)
