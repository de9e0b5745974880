-- The operator views again, readable by the sqlite3 an operator's OS ships (3.31 and later).
--
-- 0001 and 0006 took "now" from unixepoch('subsec'): unixepoch() arrived in SQLite 3.38 and its
-- 'subsec' modifier in 3.42. On 3.38 to 3.41 (Debian bookworm ships 3.40) the unknown modifier
-- made it NULL, so every count of queue_depth that compares with now was 0 and every age NULL,
-- with no error; before 3.38 the views did not run at all. Now is taken from julianday('now'),
-- which every SQLite has: days since the Julian epoch, whose 'now' is kept in whole
-- milliseconds, so the rounded product is exact unix milliseconds.

DROP VIEW task_overview;
DROP VIEW queue_depth;
DROP VIEW recent_failures;

CREATE VIEW task_overview AS
WITH clock AS (SELECT CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER) AS now_ms)
SELECT id,
       queue,
       kind,
       status,
       attempts || '/' || max_attempts                                  AS attempts,
       priority,
       strftime('%Y-%m-%dT%H:%M:%fZ', created_at / 1000.0, 'unixepoch') AS created,
       strftime('%Y-%m-%dT%H:%M:%fZ', run_at / 1000.0, 'unixepoch')     AS run_at,
       round((clock.now_ms - created_at) / 1000.0, 1)                   AS age_s,
       CASE WHEN status = 'running'
            THEN round((lease_expires_at - clock.now_ms) / 1000.0, 1) END
                                                                         AS lease_left_s,
       lease_owner,
       last_error,
       user_id
FROM tasks, clock;

CREATE VIEW queue_depth AS
WITH clock AS (SELECT CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER) AS now_ms),
     names AS (SELECT queue AS name FROM tasks WHERE status = 'pending'
               UNION SELECT queue FROM tasks WHERE status = 'running'
               UNION SELECT queue FROM tasks WHERE completed_at IS NOT NULL
               UNION SELECT name FROM queues)
SELECT n.name AS queue,
       coalesce(q.paused, 0) AS paused,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'pending'
            AND t.run_at <= clock.now_ms) AS pending,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'pending'
            AND t.run_at > clock.now_ms) AS scheduled,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'running') AS running,
       (SELECT count(*) FROM tasks t WHERE t.status = 'completed' AND t.queue = n.name
            AND t.completed_at IS NOT NULL) AS completed,
       (SELECT count(*) FROM tasks t WHERE t.status = 'failed' AND t.queue = n.name
            AND t.completed_at IS NOT NULL) AS failed,
       (SELECT count(*) FROM tasks t WHERE t.status = 'canceled' AND t.queue = n.name
            AND t.completed_at IS NOT NULL) AS canceled
FROM names n CROSS JOIN clock LEFT JOIN queues q ON q.name = n.name
ORDER BY n.name;

CREATE VIEW recent_failures AS
SELECT id,
       queue,
       kind,
       attempts,
       strftime('%Y-%m-%dT%H:%M:%fZ', completed_at / 1000.0, 'unixepoch') AS failed_at,
       last_error
FROM tasks
WHERE status = 'failed' AND completed_at IS NOT NULL
ORDER BY completed_at DESC
LIMIT 100;
