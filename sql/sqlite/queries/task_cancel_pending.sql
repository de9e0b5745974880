-- Cancel a task no worker holds (pending or waiting): it ends at once.
UPDATE tasks
SET status = 'canceled', completed_at = :now, updated_at = :now, wait_until = NULL, parked = NULL
WHERE id = :id AND (status = 'pending' OR status = 'waiting')
RETURNING *
