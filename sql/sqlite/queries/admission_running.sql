-- Running tasks of queue :queue, of every process (global_concurrency). Reads the running set
-- (tasks_lease), which is no larger than the slots of all workers.
SELECT count(*) FROM tasks WHERE status = 'running' AND queue = :queue
