-- Create or replace schedule :name, keeping its last firing. A config schedule is replaced only
-- by config (:source = 'config'): an API write to its name returns no row.
INSERT INTO schedules (name, cron, timezone, task, catch_up, catch_up_max, source, created_at,
                       updated_at)
VALUES (:name, :cron, :timezone, :task, :catch_up, :catch_up_max, :source, :now, :now)
ON CONFLICT (name) DO UPDATE
SET cron = excluded.cron, timezone = excluded.timezone, task = excluded.task,
    catch_up = excluded.catch_up, catch_up_max = excluded.catch_up_max,
    source = excluded.source, updated_at = excluded.updated_at
WHERE schedules.source = 'api' OR excluded.source = 'config'
RETURNING *
