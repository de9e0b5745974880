-- Delete config schedules whose names are not in the JSON array :names (gone from the config).
DELETE FROM schedules
WHERE source = 'config' AND name NOT IN (SELECT value FROM json_each(:names))
