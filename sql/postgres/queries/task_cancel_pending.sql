-- Cancel a task no worker holds (pending or waiting): it ends at once. $1 id, $2 now.
UPDATE tasks
SET status = 'canceled', completed_at = $2, updated_at = $2, wait_until = NULL
WHERE id = $1 AND status IN ('pending', 'waiting')
RETURNING *
