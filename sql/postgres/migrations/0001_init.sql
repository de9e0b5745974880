-- spool's PostgreSQL schema, version 1: the SQLite schema at its version 10, in PostgreSQL's
-- types. Times are bigint milliseconds since the Unix epoch; JSON columns are `json` (kept as
-- the exact text spool wrote, so payload sizes count as on SQLite). Applied in one transaction
-- under an advisory lock (see src/store/postgres/migrate.rs); forward-only: never edit this
-- file once released, add 0002_... instead.

CREATE TABLE users (
    id          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text    NOT NULL,   -- token users: the name given to spool token create;
                                    -- JWT users: the value of the user claim (e.g. sub)
    issuer      text,               -- NULL for token users; the JWT issuer for JWT users
    is_admin    boolean NOT NULL DEFAULT false,
    created_at  bigint  NOT NULL
);
CREATE UNIQUE INDEX users_token_name ON users (name) WHERE issuer IS NULL;
CREATE UNIQUE INDEX users_jwt ON users (issuer, name) WHERE issuer IS NOT NULL;

CREATE TABLE tokens (
    id          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  text    NOT NULL UNIQUE,  -- hex SHA-256 of the bearer token, never the token
    created_at  bigint  NOT NULL
);
CREATE INDEX tokens_user ON tokens (user_id);

CREATE TABLE tasks (
    id               uuid    PRIMARY KEY,         -- UUID v7: sorts by creation time
    user_id          text    NOT NULL,            -- users.id of the owner, as text
    queue            text    NOT NULL,
    kind             text    NOT NULL,
    payload          json    NOT NULL,
    status           text    NOT NULL
                     CHECK (status IN ('pending', 'running', 'completed', 'failed', 'canceled')),
    priority         integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    run_at           bigint  NOT NULL,
    attempts         bigint  NOT NULL DEFAULT 0,
    max_attempts     bigint  NOT NULL CHECK (max_attempts >= 1),
    timeout_ms       bigint  NOT NULL,
    lease_owner      text,                        -- workers.id holding the lease
    lease_expires_at bigint,
    cancel_requested boolean NOT NULL DEFAULT false,
    last_error       text,
    result           json,
    idempotency_key  text,
    request_hash     text,
    created_at       bigint  NOT NULL,
    started_at       bigint,
    completed_at     bigint,                      -- set exactly when status is terminal
    updated_at       bigint  NOT NULL,
    -- The task's messages so far: the last message's seq (see messages). Raised under the
    -- task's row lock, so one task's messages commit in seq order.
    message_seq      bigint  NOT NULL DEFAULT 0
);

-- The claim: runnable tasks of one queue, priority first, then run_at, then id.
CREATE INDEX tasks_claim ON tasks (queue, priority DESC, run_at, id) WHERE status = 'pending';
-- Leases that may have run out.
CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE status = 'running';
-- A worker's leases (heartbeats).
CREATE INDEX tasks_lease_owner ON tasks (lease_owner) WHERE status = 'running';
-- A user's task list, newest first.
CREATE INDEX tasks_user ON tasks (user_id, id);
-- An idempotency key names one task per user.
CREATE UNIQUE INDEX tasks_idempotency ON tasks (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Finished tasks: counts by status and queue, the retention pruner, recent failures.
CREATE INDEX tasks_finished ON tasks (status, queue, completed_at)
    WHERE completed_at IS NOT NULL;

-- Messages of a task, keyed by the task's own sequence: seq is allocated by raising
-- tasks.message_seq in the inserting transaction, which holds the task's row lock until it
-- commits, so a later seq never commits before an earlier one of the same task (a global
-- sequence would: PostgreSQL hands sequence values out before commit, in no commit order).
CREATE TABLE messages (
    task_id     uuid    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq         bigint  NOT NULL,                  -- the SSE event id within its task
    kind        text    NOT NULL,
    content     json    NOT NULL,
    created_at  bigint  NOT NULL,
    PRIMARY KEY (task_id, seq)
);

CREATE TABLE workers (
    id           text    PRIMARY KEY,
    host         text    NOT NULL,
    pid          bigint  NOT NULL,
    started_at   bigint  NOT NULL,
    heartbeat_at bigint  NOT NULL
);

CREATE TABLE queues (
    name        text    PRIMARY KEY,
    paused      boolean NOT NULL DEFAULT false,
    updated_at  bigint  NOT NULL
);

-- One row that /readyz rewrites: a real write that must be durable at commit.
CREATE TABLE health (
    id          integer PRIMARY KEY CHECK (id = 1),
    checked_at  bigint  NOT NULL
);
INSERT INTO health (id, checked_at) VALUES (1, 0);

-- Per-attempt tokens handed to webhook receivers (stored hashed), bound to one claim.
CREATE TABLE task_tokens (
    token_hash  text    PRIMARY KEY,              -- hex SHA-256 of Spool-Task-Token
    task_id     uuid    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt     bigint  NOT NULL,
    lease_owner text    NOT NULL,                 -- the claim: worker, attempt and start time
    started_at  bigint  NOT NULL,
    created_at  bigint  NOT NULL
);
CREATE INDEX task_tokens_task ON task_tokens (task_id);

-- An attempt ends when its task leaves `running` or is claimed again: its tokens go with it,
-- whichever statement did it.
CREATE FUNCTION spool_task_tokens_end() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_tokens WHERE task_id = OLD.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER task_tokens_end_with_attempt
AFTER UPDATE OF status, attempts, lease_owner ON tasks
FOR EACH ROW
WHEN (OLD.status = 'running'
      AND (NEW.status <> 'running' OR NEW.attempts <> OLD.attempts
           OR NEW.lease_owner IS DISTINCT FROM OLD.lease_owner))
EXECUTE FUNCTION spool_task_tokens_end();

-- Per-user usage for the quotas of [limits], kept by triggers so every writer keeps it true.
-- A user's unfinished (pending or running) tasks and the bytes of payload of their stored tasks.
CREATE TABLE user_usage (
    user_id       text    PRIMARY KEY,
    unfinished    bigint  NOT NULL DEFAULT 0,
    payload_bytes bigint  NOT NULL DEFAULT 0
);

CREATE FUNCTION spool_usage_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_usage AS u (user_id, unfinished, payload_bytes)
    SELECT n.user_id,
           count(*) FILTER (WHERE n.status IN ('pending', 'running')),
           sum(octet_length(n.payload::text))
    FROM new_rows n GROUP BY n.user_id
    ON CONFLICT (user_id) DO UPDATE
        SET unfinished = u.unfinished + excluded.unfinished,
            payload_bytes = u.payload_bytes + excluded.payload_bytes;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_usage_insert AFTER INSERT ON tasks
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION spool_usage_insert();

-- Claims (pending -> running) change nothing here; only a move in or out of the unfinished set.
CREATE FUNCTION spool_usage_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE user_usage
    SET unfinished = unfinished + CASE WHEN NEW.status IN ('pending', 'running') THEN 1 ELSE -1 END
    WHERE user_id = NEW.user_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_usage_status AFTER UPDATE OF status ON tasks
FOR EACH ROW
WHEN ((OLD.status IN ('pending', 'running')) <> (NEW.status IN ('pending', 'running')))
EXECUTE FUNCTION spool_usage_status();

CREATE FUNCTION spool_usage_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE user_usage AS u
    SET unfinished = u.unfinished - d.unfinished,
        payload_bytes = u.payload_bytes - d.bytes
    FROM (SELECT o.user_id,
                 count(*) FILTER (WHERE o.status IN ('pending', 'running')) AS unfinished,
                 sum(octet_length(o.payload::text)) AS bytes
          FROM old_rows o GROUP BY o.user_id) AS d
    WHERE u.user_id = d.user_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_usage_delete AFTER DELETE ON tasks
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION spool_usage_delete();

-- Every change of a task's state, in commit order: what GET /v1/events streams and resumes
-- from, whichever process made the change. Triggers write it, so no write path can forget it.
--
-- Commit order: a sequence would hand out numbers before commit, and a reader past 12 would
-- never see an 11 that commits after 12. So positions are allocated as max(seq) + 1 while
-- holding a transaction-scoped advisory lock (key 7_306_996_425_318_424_321, "spool-changes"),
-- which is released only at commit or rollback: writers of task changes are serialized from
-- their first change to their commit, so seq order is commit order and seqs are contiguous
-- (a rolled-back position is handed out again). The cost: transactions that change a task's
-- state commit one at a time (spool takes the lock as its first statement, so it never waits
-- for the lock while holding row locks). Pruning always keeps the newest row, so a position is
-- never handed out twice.
CREATE TABLE task_changes (
    seq      bigint  PRIMARY KEY,
    task_id  uuid    NOT NULL,
    status   text    NOT NULL,       -- the status it changed to
    at       bigint  NOT NULL
);

CREATE FUNCTION spool_task_changes_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7306996425318424321);
    INSERT INTO task_changes (seq, task_id, status, at)
    SELECT b.base + row_number() OVER (ORDER BY n.id), n.id, n.status, n.updated_at
    FROM new_rows n, (SELECT coalesce(max(seq), 0) AS base FROM task_changes) AS b;
    RETURN NULL;
END
$$;
CREATE TRIGGER task_changes_insert AFTER INSERT ON tasks
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION spool_task_changes_insert();

CREATE FUNCTION spool_task_changes_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7306996425318424321);
    INSERT INTO task_changes (seq, task_id, status, at)
    SELECT coalesce(max(seq), 0) + 1, NEW.id, NEW.status, NEW.updated_at FROM task_changes;
    RETURN NULL;
END
$$;
CREATE TRIGGER task_changes_update AFTER UPDATE OF status, cancel_requested ON tasks
FOR EACH ROW
WHEN (NEW.status IS DISTINCT FROM OLD.status
      OR NEW.cancel_requested IS DISTINCT FROM OLD.cancel_requested)
EXECUTE FUNCTION spool_task_changes_update();
