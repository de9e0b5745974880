DELETE FROM workers WHERE id = :id OR heartbeat_at < :stale_before
