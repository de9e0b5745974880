-- Forget the oldest changes: those before the first one at or after :before, but never one of
-- the newest :keep, at most :limit at a time. Only the first :limit rows are ever looked at (a
-- range at the start of the table), so a call costs what it deletes, however long the log.
DELETE FROM task_changes
WHERE seq IN (
    SELECT head.seq
    FROM (SELECT seq FROM task_changes ORDER BY seq LIMIT :limit) AS head
    WHERE head.seq < coalesce(
            (SELECT min(h.seq)
             FROM (SELECT seq, at FROM task_changes ORDER BY seq LIMIT :limit) AS h
             WHERE h.at >= :before),
            9223372036854775807)
      AND head.seq <= (SELECT coalesce(max(seq), 0) FROM task_changes) - :keep)
