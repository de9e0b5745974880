-- Record that schedule :name handled its firings up to :at (never moving back), and the task
-- the newest enqueued.
UPDATE schedules
SET last_task_id = CASE WHEN last_fire_at IS NULL OR :at >= last_fire_at
                        THEN coalesce(:task_id, last_task_id) ELSE last_task_id END,
    last_fire_at = max(coalesce(last_fire_at, :at), :at)
WHERE name = :name
