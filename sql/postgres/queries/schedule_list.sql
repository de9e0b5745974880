-- Every schedule, by name.
SELECT * FROM schedules ORDER BY name
