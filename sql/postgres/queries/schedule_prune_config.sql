-- Delete config schedules whose names are not in $1 (gone from the config).
DELETE FROM schedules WHERE source = 'config' AND name <> ALL($1::text[])
