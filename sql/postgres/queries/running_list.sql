-- Tasks running now, with their leases, oldest first.
SELECT * FROM tasks WHERE status = 'running' ORDER BY started_at, id LIMIT $1
