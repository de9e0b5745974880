-- Create or replace schedule :name, keeping its last firing
-- unless its cron or timezone changes: then nothing before now is due (the old expression's
-- missed firings are not the new one's). A config schedule is replaced only
-- by config (:source = 'config'): an API write to its name returns no row.
INSERT INTO schedules (name, cron, timezone, task, catch_up, catch_up_max, source, created_at,
                       updated_at)
VALUES (:name, :cron, :timezone, :task, :catch_up, :catch_up_max, :source, :now, :now)
ON CONFLICT (name) DO UPDATE
SET cron = excluded.cron, timezone = excluded.timezone, task = excluded.task,
    catch_up = excluded.catch_up, catch_up_max = excluded.catch_up_max,
    source = excluded.source, updated_at = excluded.updated_at,
    last_fire_at = CASE WHEN schedules.cron <> excluded.cron
                          OR schedules.timezone <> excluded.timezone
                        THEN excluded.updated_at ELSE schedules.last_fire_at END
WHERE schedules.source = 'api' OR excluded.source = 'config'
RETURNING *
