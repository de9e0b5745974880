-- The registered worker pools (`spool inspect`), each with the tasks it holds running (only
-- running tasks are read: a partial index holds them).
SELECT w.id, w.host, w.pid, w.started_at, w.heartbeat_at, coalesce(r.n, 0) AS running
FROM workers AS w
LEFT JOIN (SELECT lease_owner, count(*) AS n FROM tasks WHERE status = 'running'
           GROUP BY lease_owner) AS r ON r.lease_owner = w.id
ORDER BY w.host, w.started_at, w.id
