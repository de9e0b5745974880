-- The runnable unparked tasks of queue :queue in claim order, with their concurrency key (NULL
-- for none): the walk of a per-key claim, which stops reading by itself (see admission.rs).
SELECT rowid, priority, run_at, concurrency_key FROM tasks INDEXED BY tasks_claim
WHERE queue = :queue AND status = 'pending' AND parked IS NULL AND run_at <= :now
ORDER BY priority DESC, run_at, rowid
