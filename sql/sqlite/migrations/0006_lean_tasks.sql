-- Fewer b-trees on the hot path. Every index of `tasks` is written again when a task is
-- enqueued, claimed and finished; under load those writes were most of the writer's time.
--
-- * The table-level UNIQUE (user_id, idempotency_key) indexed every task, keyed or not: it
--   becomes a partial unique index over keyed tasks only. SQLite cannot drop a table
--   constraint, so the table is rebuilt (same columns, same order) the documented way.
-- * tasks_queue_status and tasks_prune changed on every status change. Queue depths now come
--   from the indexes that exist anyway: pending from tasks_claim, running from tasks_lease,
--   finished from tasks_finished.
-- * tasks_claim ends with the rowid instead of the id (see below).
-- * tasks_finished's WHERE `status IN (...)` made SQLite build a temporary b-tree on every row
--   written. It is now keyed by `completed_at IS NOT NULL` (set exactly when a task is
--   terminal) and carries the queue, so queue depths read it without touching the table.
--
-- The migration runner turns foreign keys off around this step (DROP TABLE would otherwise
-- cascade into messages and task_tokens) and runs foreign_key_check before it commits.

DROP VIEW task_overview;
DROP VIEW queue_depth;
DROP VIEW recent_failures;

CREATE TABLE tasks_new (
    id               TEXT    PRIMARY KEY,         -- UUID v7: sorts by creation time
    user_id          TEXT    NOT NULL,            -- users.name of the owner
    queue            TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    payload          TEXT    NOT NULL DEFAULT 'null',   -- JSON
    -- ORs, not IN (...): SQLite builds a temporary b-tree for an IN list of more than two
    -- constants on every row it checks.
    status           TEXT    NOT NULL
                     CHECK (status = 'pending' OR status = 'running' OR status = 'completed'
                            OR status = 'failed' OR status = 'canceled'),
    priority         INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    run_at           INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    timeout_ms       INTEGER NOT NULL,
    lease_owner      TEXT,                        -- workers.id holding the lease
    lease_expires_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested = 0 OR cancel_requested = 1),
    last_error       TEXT,
    result           TEXT,                        -- JSON
    idempotency_key  TEXT,
    request_hash     TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    completed_at     INTEGER,                     -- set exactly when status is terminal
    updated_at       INTEGER NOT NULL
);
INSERT INTO tasks_new SELECT * FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;

-- The claim: runnable tasks of one queue, priority first, then run_at, then insertion order
-- (the rowid every index entry ends with; 0001 spelled out the 36-character id, which made the
-- index larger and every key comparison in it longer).
CREATE INDEX tasks_claim ON tasks (queue, priority DESC, run_at) WHERE status = 'pending';
-- Leases that may have run out.
CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE status = 'running';
-- A user's task list, newest first.
CREATE INDEX tasks_user ON tasks (user_id, id);
-- An idempotency key names one task per user.
CREATE UNIQUE INDEX tasks_idempotency ON tasks (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Finished tasks: counts by status and queue, the retention pruner, recent failures.
CREATE INDEX tasks_finished ON tasks (status, queue, completed_at)
    WHERE completed_at IS NOT NULL;

-- Operator views, as in 0001; queue_depth now reads the indexes above.
CREATE VIEW task_overview AS
SELECT id,
       queue,
       kind,
       status,
       attempts || '/' || max_attempts                                  AS attempts,
       priority,
       strftime('%Y-%m-%dT%H:%M:%fZ', created_at / 1000.0, 'unixepoch') AS created,
       strftime('%Y-%m-%dT%H:%M:%fZ', run_at / 1000.0, 'unixepoch')     AS run_at,
       round((unixepoch('subsec') * 1000 - created_at) / 1000.0, 1)     AS age_s,
       CASE WHEN status = 'running'
            THEN round((lease_expires_at - unixepoch('subsec') * 1000) / 1000.0, 1) END
                                                                         AS lease_left_s,
       lease_owner,
       last_error,
       user_id
FROM tasks;

CREATE VIEW queue_depth AS
WITH names AS (SELECT queue AS name FROM tasks WHERE status = 'pending'
               UNION SELECT queue FROM tasks WHERE status = 'running'
               UNION SELECT queue FROM tasks WHERE completed_at IS NOT NULL
               UNION SELECT name FROM queues)
SELECT n.name AS queue,
       coalesce(q.paused, 0) AS paused,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'pending'
            AND t.run_at <= unixepoch('subsec') * 1000) AS pending,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'pending'
            AND t.run_at > unixepoch('subsec') * 1000) AS scheduled,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'running') AS running,
       (SELECT count(*) FROM tasks t WHERE t.status = 'completed' AND t.queue = n.name
            AND t.completed_at IS NOT NULL) AS completed,
       (SELECT count(*) FROM tasks t WHERE t.status = 'failed' AND t.queue = n.name
            AND t.completed_at IS NOT NULL) AS failed,
       (SELECT count(*) FROM tasks t WHERE t.status = 'canceled' AND t.queue = n.name
            AND t.completed_at IS NOT NULL) AS canceled
FROM names n LEFT JOIN queues q ON q.name = n.name
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
