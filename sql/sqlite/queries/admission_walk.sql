-- Up to :n runnable tasks of queue :queue in claim order, with their concurrency key (NULL for
-- none): the short walk a per-key claim tries before the scan of every key (see admission.rs).
SELECT rowid, priority, run_at, concurrency_key FROM tasks INDEXED BY tasks_claim
WHERE queue = :queue AND status = 'pending' AND parked IS NULL AND run_at <= :now
ORDER BY priority DESC, run_at, rowid
LIMIT (SELECT :n)
