-- The owner wrote to a waiting task: it is runnable again at once, and its next attempt is told why.
UPDATE tasks
SET status = 'pending', wake_reason = 'message', wait_until = NULL, run_at = :now, updated_at = :now
WHERE id = :id AND status = 'waiting'
RETURNING *
