-- /readyz: a real write that must reach the disk at commit.
UPDATE health SET checked_at = :now WHERE id = 1
