-- Delete API schedule :name (config schedules live in the config file).
DELETE FROM schedules WHERE name = :name AND source = 'api'
