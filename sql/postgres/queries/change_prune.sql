-- Forget the oldest changes: those before the first one at or after $1, but never one of the
-- newest $2, at most $3 at a time. Only the first $3 rows are looked at.
DELETE FROM task_changes
WHERE seq IN (
    SELECT head.seq
    FROM (SELECT seq FROM task_changes ORDER BY seq LIMIT $3) AS head
    WHERE head.seq < coalesce(
            (SELECT min(h.seq)
             FROM (SELECT seq, at FROM task_changes ORDER BY seq LIMIT $3) AS h
             WHERE h.at >= $1),
            9223372036854775807)
      AND head.seq <= (SELECT coalesce(max(seq), 0) FROM task_changes) - $2)
