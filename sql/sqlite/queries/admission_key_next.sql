-- The first concurrency key after :after that has pending tasks in queue :queue, with its best
-- pending task (rowid, priority, run_at; in claim order, runnable or not): one seek in
-- tasks_key_pending, so listing the keys costs one seek per key, not one step per task, and a
-- key whose best task is runnable and that has room for one needs no second read.
SELECT concurrency_key, rowid, priority, run_at FROM tasks INDEXED BY tasks_key_pending
WHERE queue = :queue AND status = 'pending' AND concurrency_key IS NOT NULL
  AND concurrency_key > :after
ORDER BY concurrency_key, priority DESC, run_at, rowid
LIMIT 1
