-- The first concurrency key after :after that has pending tasks in queue :queue: one seek in
-- tasks_key_pending, so listing the keys costs one seek per key, not one step per task.
SELECT concurrency_key FROM tasks INDEXED BY tasks_key_pending
WHERE queue = :queue AND status = 'pending' AND concurrency_key IS NOT NULL
  AND concurrency_key > :after
ORDER BY concurrency_key
LIMIT 1
