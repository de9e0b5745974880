-- Running tasks per concurrency key of queue :queue, of every process (per_key_concurrency).
SELECT concurrency_key, count(*) AS n FROM tasks INDEXED BY tasks_key_running
WHERE queue = :queue AND status = 'running' AND concurrency_key IS NOT NULL
GROUP BY concurrency_key
