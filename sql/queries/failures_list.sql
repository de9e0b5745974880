SELECT * FROM tasks WHERE status = 'failed' ORDER BY completed_at DESC LIMIT :limit
