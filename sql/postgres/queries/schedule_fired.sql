-- Record that schedule $1 handled its firings up to $2 (never moving back), and the task the
-- newest enqueued ($3).
UPDATE schedules
SET last_task_id = CASE WHEN last_fire_at IS NULL OR $2::int8 >= last_fire_at
                        THEN coalesce($3::text, last_task_id) ELSE last_task_id END,
    last_fire_at = greatest(coalesce(last_fire_at, $2::int8), $2::int8)
WHERE name = $1
