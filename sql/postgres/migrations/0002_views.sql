-- spool's PostgreSQL schema, version 2: the operator views for psql, and the message positions
-- a task copied from SQLite skipped.
--
-- The views have the columns and meaning of the SQLite ones (sql/sqlite/migrations/0007 and
-- 0008): one row a task with readable times, age and lease time left (`task_overview`), counts
-- by queue and state (`queue_depth`; `pending` is runnable now, `scheduled` waits for its
-- run_at), the last 100 failed tasks (`recent_failures`). Times read as RFC 3339 in UTC with
-- milliseconds; `paused` is 0 or 1 as on SQLite, so one script reads both. "Now" is the
-- statement's transaction start (now()), which in psql's autocommit is the statement's start.
-- `user` is a reserved word in PostgreSQL: select it as "user".

-- Positions of tasks.message_seq that no message holds. `spool migrate-to-postgres` keeps each
-- message's SQLite id as its position (so an SSE client's Last-Event-ID carries over), and those
-- ids are global on SQLite, so a copied task's positions have gaps; the messages a task holds
-- (for limits.messages_per_task) are message_seq - message_seq_skipped. 0 for every task made
-- on PostgreSQL.
ALTER TABLE tasks ADD COLUMN message_seq_skipped bigint NOT NULL DEFAULT 0;

CREATE VIEW task_overview AS
WITH clock AS (SELECT extract(epoch FROM now()) * 1000 AS now_ms)
SELECT t.id,
       t.queue,
       t.kind,
       t.status,
       t.attempts || '/' || t.max_attempts                               AS attempts,
       t.priority,
       to_char(timestamp 'epoch' + t.created_at * interval '1 millisecond',
               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')                          AS created,
       to_char(timestamp 'epoch' + t.run_at * interval '1 millisecond',
               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')                          AS run_at,
       round((clock.now_ms - t.created_at) / 1000.0, 1)                  AS age_s,
       CASE WHEN t.status = 'running'
            THEN round((t.lease_expires_at - clock.now_ms) / 1000.0, 1) END
                                                                          AS lease_left_s,
       t.lease_owner,
       t.last_error,
       t.user_id,
       u.name || CASE WHEN u.issuer IS NULL THEN '' ELSE ' (' || u.issuer || ')' END
                                                                          AS "user"
FROM tasks AS t
CROSS JOIN clock
LEFT JOIN users AS u ON u.id::text = t.user_id;

CREATE VIEW queue_depth AS
WITH clock AS (SELECT (extract(epoch FROM now()) * 1000)::bigint AS now_ms),
     counts AS (
         SELECT t.queue,
                count(*) FILTER (WHERE t.status = 'pending' AND t.run_at <= clock.now_ms)
                    AS pending,
                count(*) FILTER (WHERE t.status = 'pending' AND t.run_at > clock.now_ms)
                    AS scheduled,
                count(*) FILTER (WHERE t.status = 'running') AS running,
                count(*) FILTER (WHERE t.status = 'completed' AND t.completed_at IS NOT NULL)
                    AS completed,
                count(*) FILTER (WHERE t.status = 'failed' AND t.completed_at IS NOT NULL)
                    AS failed,
                count(*) FILTER (WHERE t.status = 'canceled' AND t.completed_at IS NOT NULL)
                    AS canceled
         FROM tasks AS t CROSS JOIN clock
         GROUP BY t.queue),
     names AS (SELECT queue AS name FROM counts UNION SELECT name FROM queues)
SELECT n.name AS queue,
       CASE WHEN q.paused THEN 1 ELSE 0 END AS paused,
       coalesce(c.pending, 0)   AS pending,
       coalesce(c.scheduled, 0) AS scheduled,
       coalesce(c.running, 0)   AS running,
       coalesce(c.completed, 0) AS completed,
       coalesce(c.failed, 0)    AS failed,
       coalesce(c.canceled, 0)  AS canceled
FROM names AS n
LEFT JOIN counts AS c ON c.queue = n.name
LEFT JOIN queues AS q ON q.name = n.name
ORDER BY n.name;

CREATE VIEW recent_failures AS
SELECT id,
       queue,
       kind,
       attempts,
       to_char(timestamp 'epoch' + completed_at * interval '1 millisecond',
               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS failed_at,
       last_error
FROM tasks
WHERE status = 'failed' AND completed_at IS NOT NULL
ORDER BY completed_at DESC
LIMIT 100;
