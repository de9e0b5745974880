-- Delete up to :limit tasks that ended with :status before :before (messages go with them).
-- tasks_finished is keyed (status, queue, completed_at): the CTE steps from one queue to the
-- next with one seek each, then each queue's old tasks are a range of that index (by rowid, so
-- the index alone answers it).
DELETE FROM tasks
WHERE rowid IN (
    WITH RECURSIVE q(name) AS (
        SELECT min(queue) FROM tasks WHERE status = :status AND completed_at IS NOT NULL
        UNION ALL
        SELECT (SELECT min(queue) FROM tasks
                WHERE status = :status AND completed_at IS NOT NULL AND queue > q.name)
        FROM q WHERE q.name IS NOT NULL)
    -- CROSS JOIN keeps q outside: each queue's range is one index search.
    SELECT t.rowid FROM q CROSS JOIN tasks t
        ON t.status = :status AND t.queue = q.name AND t.completed_at < :before
    WHERE q.name IS NOT NULL
    LIMIT (SELECT :limit))
