-- The latest failures (tasks_finished: finished tasks carry completed_at).
SELECT * FROM tasks WHERE status = 'failed' AND completed_at IS NOT NULL
ORDER BY completed_at DESC, id DESC LIMIT $1
