DELETE FROM workers WHERE id = $1 OR heartbeat_at < $2
