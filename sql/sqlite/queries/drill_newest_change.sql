-- drill_newest_change: the time (ms) of the newest change to a task or a message, 0 when there is
-- none; the restore drill's lag is the difference of this between the live database and the
-- replica. With drill_pending.sql's, equal to max(tasks.updated_at, messages.created_at)
-- without reading the table:
-- - every task is pending, running, waiting or terminal; the pending ones are drill_pending.sql,
--   the running ones are read through tasks_lease, the waiting ones through tasks_waiting
--   (cost: the leases and the waits, not the history);
-- - a terminal task's updated_at is its completed_at (every path to a terminal status sets both
--   to the same :now, and nothing but a retry, which makes it pending, changes it afterwards):
--   the newest per (status, queue) is one seek at the end of tasks_finished, and the queues are
--   enumerated by seeking from one to the next (the recursive `terminal`), so the cost is the
--   number of queues, not of tasks;
-- - messages are inserted in id order: the newest is the last row.
WITH RECURSIVE terminal(status, queue) AS (
    SELECT s.status,
           (SELECT min(t.queue) FROM tasks AS t
            WHERE t.status = s.status AND t.completed_at IS NOT NULL)
    FROM (SELECT 'completed' AS status UNION ALL SELECT 'failed' UNION ALL SELECT 'canceled') AS s
    UNION ALL
    SELECT g.status,
           (SELECT min(t.queue) FROM tasks AS t
            WHERE t.status = g.status AND t.completed_at IS NOT NULL AND t.queue > g.queue)
    FROM terminal AS g
    WHERE g.queue IS NOT NULL
)
SELECT max(coalesce((SELECT max(updated_at) FROM tasks WHERE status = 'running'), 0),
           coalesce((SELECT max(updated_at) FROM tasks WHERE status = 'waiting'), 0),
           coalesce((SELECT max((SELECT max(t.completed_at) FROM tasks AS t
                                 WHERE t.status = g.status AND t.queue = g.queue
                                   AND t.completed_at IS NOT NULL))
                     FROM terminal AS g
                     WHERE g.queue IS NOT NULL), 0),
           coalesce((SELECT created_at FROM messages ORDER BY id DESC LIMIT 1), 0))
