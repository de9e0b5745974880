-- The first concurrency key after :after that has parked tasks in queue :queue (see
-- 0015_parked.sql), with its best parked task (rowid, priority, run_at; in claim order,
-- runnable or not): one seek in tasks_key_parked, so listing the keys costs one seek per key,
-- not one step per task, and a key whose best task is runnable and that has room for one needs
-- no second read.
SELECT concurrency_key, rowid, priority, run_at FROM tasks INDEXED BY tasks_key_parked
WHERE queue = :queue AND status = 'pending' AND parked = 1 AND concurrency_key > :after
ORDER BY concurrency_key, priority DESC, run_at, rowid
LIMIT 1
