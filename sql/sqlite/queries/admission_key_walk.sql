-- Up to :n runnable keyed tasks of queue :queue in claim order, with their key: the short walk
-- a per-key claim tries before the skip scan of every key (see admission.rs).
SELECT rowid, priority, run_at, concurrency_key FROM tasks INDEXED BY tasks_claim
WHERE queue = :queue AND status = 'pending' AND run_at <= :now AND concurrency_key IS NOT NULL
ORDER BY priority DESC, run_at, rowid
LIMIT (SELECT :n)
