-- Delete API schedule $1 (config schedules live in the config file).
DELETE FROM schedules WHERE name = $1 AND source = 'api'
