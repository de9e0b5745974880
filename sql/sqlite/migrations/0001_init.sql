-- spool schema, version 1. Times are INTEGER milliseconds since the Unix epoch.
-- Forward-only: never edit this file once released; add 0002_... instead.

CREATE TABLE users (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,                 -- several tokens may share one user name
    token_hash  TEXT    NOT NULL UNIQUE,          -- hex SHA-256 of the bearer token
    is_admin    INTEGER NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
    created_at  INTEGER NOT NULL
);

CREATE TABLE tasks (
    id               TEXT    PRIMARY KEY,         -- UUID v7: sorts by creation time
    user_id          TEXT    NOT NULL,            -- users.name of the owner
    queue            TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    payload          TEXT    NOT NULL DEFAULT 'null',   -- JSON
    -- Written as ORs, not IN (...): SQLite builds a temporary b-tree for an IN list of more
    -- than two constants on every row it checks, which showed as ~10% of the writer's time.
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
    cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    last_error       TEXT,
    result           TEXT,                        -- JSON
    idempotency_key  TEXT,
    request_hash     TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    completed_at     INTEGER,
    updated_at       INTEGER NOT NULL,
    UNIQUE (user_id, idempotency_key)
);

-- The claim: runnable tasks of one queue, priority first, then run_at, then id.
CREATE INDEX tasks_claim ON tasks (queue, priority DESC, run_at, id) WHERE status = 'pending';
-- Leases that may have run out.
CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE status = 'running';
-- A user's task list, newest first.
CREATE INDEX tasks_user ON tasks (user_id, id);
-- The retention pruner.
CREATE INDEX tasks_finished ON tasks (status, completed_at)
    WHERE status IN ('completed', 'failed', 'canceled');

CREATE TABLE messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT, -- the SSE event id: increasing, never reused
    task_id     TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    kind        TEXT    NOT NULL,
    content     TEXT    NOT NULL,                  -- JSON
    created_at  INTEGER NOT NULL
);
CREATE INDEX messages_task ON messages (task_id, id);

CREATE TABLE workers (
    id           TEXT    PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);

CREATE TABLE queues (
    name        TEXT    PRIMARY KEY,
    paused      INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    updated_at  INTEGER NOT NULL
);

-- Operator views: read them with sqlite3 on the live file.
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
WITH names AS (SELECT DISTINCT queue AS name FROM tasks UNION SELECT name FROM queues)
SELECT n.name AS queue,
       coalesce(q.paused, 0) AS paused,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'pending'
            AND t.run_at <= unixepoch('subsec') * 1000) AS pending,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'pending'
            AND t.run_at > unixepoch('subsec') * 1000) AS scheduled,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'running') AS running,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'completed') AS completed,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'failed') AS failed,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'canceled') AS canceled
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
WHERE status = 'failed'
ORDER BY completed_at DESC
LIMIT 100;
