-- Cancel a task no worker holds: it ends at once. $1 id, $2 now.
UPDATE tasks
SET status = 'canceled', completed_at = $2, updated_at = $2
WHERE id = $1 AND status = 'pending'
RETURNING *
