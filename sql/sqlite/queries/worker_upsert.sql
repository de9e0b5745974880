INSERT INTO workers (id, host, pid, started_at, heartbeat_at) VALUES (:id, :host, :pid, :now, :now)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, host = excluded.host,
    pid = excluded.pid
