-- /readyz: a real write that must be durable at commit.
UPDATE health SET checked_at = $1 WHERE id = 1
