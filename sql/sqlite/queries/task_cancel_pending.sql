-- Cancel a task no worker holds: it ends at once.
UPDATE tasks
SET status = 'canceled', completed_at = :now, updated_at = :now
WHERE id = :id AND status = 'pending'
RETURNING *
