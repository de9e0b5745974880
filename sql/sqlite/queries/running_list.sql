-- Tasks running now, with their leases.
SELECT * FROM tasks WHERE status = 'running' ORDER BY started_at LIMIT (SELECT :limit)
