-- Ask the worker running a task to stop it; the worker ends it `canceled`.
UPDATE tasks
SET cancel_requested = 1, updated_at = :now
WHERE id = :id AND status = 'running'
RETURNING *
