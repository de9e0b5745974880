-- Forget changes older than :before, but never the newest :keep, at most :limit at a time
-- (the oldest first: a range at the start of the table).
DELETE FROM task_changes
WHERE seq IN (
    SELECT seq FROM task_changes
    WHERE at < :before
      AND seq <= (SELECT coalesce(max(seq), 0) FROM task_changes) - :keep
    ORDER BY seq
    LIMIT :limit)
