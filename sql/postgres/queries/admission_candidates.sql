-- The tasks a per-key claim of queue $1 at $2 may take: for every concurrency key with pending
-- tasks (listed by a recursive skip scan of tasks_key_pending, one probe per key) its best
-- runnable tasks up to the key's room ($3, per_key_concurrency, less its running tasks), with
-- their rank within the key; and the best $4 runnable tasks without a key (rank 1). The caller
-- orders them (priority, then rank: round robin by key, then run_at) and takes its room.
WITH RECURSIVE keys(k) AS (
    (SELECT concurrency_key FROM tasks
     WHERE queue = $1 AND status = 'pending' AND concurrency_key IS NOT NULL
     ORDER BY concurrency_key LIMIT 1)
    UNION ALL
    SELECT (SELECT t.concurrency_key FROM tasks t
            WHERE t.queue = $1 AND t.status = 'pending' AND t.concurrency_key IS NOT NULL
              AND t.concurrency_key > keys.k
            ORDER BY t.concurrency_key LIMIT 1)
    FROM keys WHERE keys.k IS NOT NULL
),
running AS (
    SELECT concurrency_key AS k, count(*) AS n FROM tasks
    WHERE queue = $1 AND status = 'running' AND concurrency_key IS NOT NULL
    GROUP BY concurrency_key
)
SELECT c.id, c.priority, c.run_at, c.rank
FROM keys
LEFT JOIN running r ON r.k = keys.k
CROSS JOIN LATERAL (
    SELECT t.id, t.priority, t.run_at,
           row_number() OVER (ORDER BY t.priority DESC, t.run_at, t.id) AS rank
    FROM tasks t
    WHERE t.queue = $1 AND t.status = 'pending' AND t.concurrency_key = keys.k
      AND t.run_at <= $2
    ORDER BY t.priority DESC, t.run_at, t.id
    LIMIT greatest($3 - coalesce(r.n, 0), 0)) AS c
WHERE keys.k IS NOT NULL
UNION ALL
(SELECT t.id, t.priority, t.run_at, 1::int8 AS rank
 FROM tasks t
 WHERE t.queue = $1 AND t.status = 'pending' AND t.run_at <= $2 AND t.concurrency_key IS NULL
 ORDER BY t.priority DESC, t.run_at, t.id
 LIMIT $4)
