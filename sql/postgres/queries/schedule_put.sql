-- Create or replace schedule $1 ($2 cron, $3 timezone, $4 task JSON text, $5 catch_up,
-- $6 catch_up_max, $7 source, $8 now), keeping its last firing unless its cron or timezone
-- changes: then nothing before now is due (the old expression's missed firings are not the new
-- one's). A config schedule is replaced only by config: an API write to its name returns no row.
INSERT INTO schedules (name, cron, timezone, task, catch_up, catch_up_max, source, created_at,
                       updated_at)
VALUES ($1, $2, $3, $4::text::json, $5, $6, $7, $8, $8)
ON CONFLICT (name) DO UPDATE
SET cron = excluded.cron, timezone = excluded.timezone, task = excluded.task,
    catch_up = excluded.catch_up, catch_up_max = excluded.catch_up_max,
    source = excluded.source, updated_at = excluded.updated_at,
    last_fire_at = CASE WHEN schedules.cron <> excluded.cron
                          OR schedules.timezone <> excluded.timezone
                        THEN excluded.updated_at ELSE schedules.last_fire_at END
WHERE schedules.source = 'api' OR excluded.source = 'config'
RETURNING *
