INSERT INTO workers (id, host, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $4)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, host = excluded.host,
    pid = excluded.pid
