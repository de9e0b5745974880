-- Interactive tasks: a task may park itself as `waiting` (no lease, no slot) until its owner
-- writes to it or its wait times out; an attempt saves a checkpoint every later attempt starts
-- with; every message records who wrote it; a short-lived token lets a browser read one task.
--
-- `status` gains 'waiting'. Its CHECK constraint cannot be changed in place, so the table is
-- rebuilt the documented way (same columns in the same order, new ones at the end), with every
-- index, trigger and view on it made again. On a large database this step rewrites the table
-- once. Waiting tasks are unfinished: they count against their owner's pending-task quota.

DROP VIEW task_overview;
DROP VIEW queue_depth;
DROP VIEW recent_failures;

CREATE TABLE tasks_new (
    id               TEXT    PRIMARY KEY,         -- UUID v7: sorts by creation time
    user_id          TEXT    NOT NULL,            -- users.id of the owner
    queue            TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    payload          TEXT    NOT NULL DEFAULT 'null',   -- JSON
    -- ORs, not IN (...): SQLite builds a temporary b-tree for an IN list of more than two
    -- constants on every row it checks.
    status           TEXT    NOT NULL
                     CHECK (status = 'pending' OR status = 'running' OR status = 'waiting'
                            OR status = 'completed' OR status = 'failed' OR status = 'canceled'),
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
    updated_at       INTEGER NOT NULL,
    checkpoint       TEXT,                        -- JSON an attempt saved; later attempts start with it
    wait_until       INTEGER,                     -- while waiting: when the wait times out
    wake_reason      TEXT,                        -- 'message' or 'timeout': why a wait ended
    inbox_cursor     INTEGER NOT NULL DEFAULT 0,  -- the owner's messages up to here are behind the task
    inbox_read       INTEGER NOT NULL DEFAULT 0   -- ... and up to here were read by the running attempt
);
INSERT INTO tasks_new (id, user_id, queue, kind, payload, status, priority, run_at, attempts,
    max_attempts, timeout_ms, lease_owner, lease_expires_at, cancel_requested, last_error,
    result, idempotency_key, request_hash, created_at, started_at, completed_at, updated_at)
SELECT id, user_id, queue, kind, payload, status, priority, run_at, attempts,
    max_attempts, timeout_ms, lease_owner, lease_expires_at, cancel_requested, last_error,
    result, idempotency_key, request_hash, created_at, started_at, completed_at, updated_at
FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;

CREATE INDEX tasks_claim ON tasks (queue, priority DESC, run_at) WHERE status = 'pending';
CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_user ON tasks (user_id, id);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_finished ON tasks (status, queue, completed_at)
    WHERE completed_at IS NOT NULL;
-- Waits that time out: the claim's rescue step wakes them.
CREATE INDEX tasks_waiting ON tasks (wait_until) WHERE status = 'waiting';

-- Every message records who wrote it: the owner (or an admin) through the API, or the task.
ALTER TABLE messages ADD COLUMN author TEXT NOT NULL DEFAULT 'task'
    CHECK (author = 'task' OR author = 'user');

-- Read tokens for one task's events and messages (a browser's EventSource sends no header).
CREATE TABLE stream_tokens (
    token_hash TEXT    PRIMARY KEY,               -- SHA-256 of the token, hex
    task_id    TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX stream_tokens_expiry ON stream_tokens (expires_at);

-- The triggers that went with the old table (0002, 0009, 0010), waiting counted as unfinished.
CREATE TRIGGER task_tokens_end_with_attempt
AFTER UPDATE OF status, attempts, lease_owner ON tasks
WHEN OLD.status = 'running'
     AND (NEW.status <> 'running' OR NEW.attempts <> OLD.attempts
          OR NEW.lease_owner IS NOT OLD.lease_owner)
BEGIN
    DELETE FROM task_tokens WHERE task_id = OLD.id;
END;

CREATE TRIGGER tasks_usage_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO user_usage (user_id, unfinished, payload_bytes)
    VALUES (new.user_id, new.status = 'pending' OR new.status = 'running' OR new.status = 'waiting',
            length(CAST(new.payload AS BLOB)))
    ON CONFLICT (user_id) DO UPDATE
        SET unfinished = unfinished + excluded.unfinished,
            payload_bytes = payload_bytes + excluded.payload_bytes;
END;

CREATE TRIGGER tasks_usage_status AFTER UPDATE OF status ON tasks
WHEN (old.status = 'pending' OR old.status = 'running' OR old.status = 'waiting')
  != (new.status = 'pending' OR new.status = 'running' OR new.status = 'waiting')
BEGIN
    UPDATE user_usage
    SET unfinished = unfinished
        + CASE WHEN new.status = 'pending' OR new.status = 'running' OR new.status = 'waiting'
               THEN 1 ELSE -1 END
    WHERE user_id = new.user_id;
END;

CREATE TRIGGER tasks_usage_delete AFTER DELETE ON tasks
BEGIN
    UPDATE user_usage
    SET unfinished = unfinished
            - (old.status = 'pending' OR old.status = 'running' OR old.status = 'waiting'),
        payload_bytes = payload_bytes - length(CAST(old.payload AS BLOB))
    WHERE user_id = old.user_id;
END;

CREATE TRIGGER task_changes_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO task_changes (task_id, status, at) VALUES (new.id, new.status, new.updated_at);
END;

CREATE TRIGGER task_changes_update AFTER UPDATE OF status, cancel_requested ON tasks
WHEN new.status IS NOT old.status OR new.cancel_requested IS NOT old.cancel_requested
BEGIN
    INSERT INTO task_changes (task_id, status, at) VALUES (new.id, new.status, new.updated_at);
END;

-- The operator views of 0007 and 0008, with waiting tasks and their wait.
CREATE VIEW task_overview AS
SELECT id,
       queue,
       kind,
       status,
       attempts || '/' || max_attempts                                  AS attempts,
       priority,
       strftime('%Y-%m-%dT%H:%M:%fZ', created_at / 1000.0, 'unixepoch') AS created,
       strftime('%Y-%m-%dT%H:%M:%fZ', run_at / 1000.0, 'unixepoch')     AS run_at,
       round(((julianday('now') - 2440587.5) * 86400000.0 - created_at) / 1000.0, 1) AS age_s,
       CASE WHEN status = 'running'
            THEN round((lease_expires_at - (julianday('now') - 2440587.5) * 86400000.0) / 1000.0, 1)
       END                                                               AS lease_left_s,
       lease_owner,
       last_error,
       user_id,
       (SELECT u.name || CASE WHEN u.issuer IS NULL THEN '' ELSE ' (' || u.issuer || ')' END
        FROM users u WHERE u.id = tasks.user_id)                         AS user,
       CASE WHEN status = 'waiting'
            THEN round((wait_until - (julianday('now') - 2440587.5) * 86400000.0) / 1000.0, 1)
       END                                                               AS wait_left_s
FROM tasks;

CREATE VIEW queue_depth AS
WITH clock AS (SELECT CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER) AS now_ms),
     names AS (SELECT queue AS name FROM tasks WHERE status = 'pending'
               UNION SELECT queue FROM tasks WHERE status = 'running'
               UNION SELECT queue FROM tasks WHERE status = 'waiting'
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
            AND t.completed_at IS NOT NULL) AS canceled,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'waiting') AS waiting
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
