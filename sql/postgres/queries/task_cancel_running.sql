-- Ask the worker running a task to stop it; the worker ends it `canceled`. $1 id, $2 now.
UPDATE tasks
SET cancel_requested = true, updated_at = $2
WHERE id = $1 AND status = 'running'
RETURNING *
