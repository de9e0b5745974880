-- The owner wrote to waiting task $1 at $2: it is runnable again at once, its next attempt told why.
UPDATE tasks
SET status = 'pending', wake_reason = 'message', wait_until = NULL, run_at = $2, updated_at = $2
WHERE id = $1 AND status = 'waiting'
RETURNING *
