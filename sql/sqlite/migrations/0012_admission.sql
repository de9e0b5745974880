-- Admission control and schedules (issue 16).
--
-- * tasks.concurrency_key: tasks with one key share their queue's per_key_concurrency.
-- * Two partial indexes over keyed tasks only, so a task without a key (and every queue without
--   a per-key limit) writes no more index entries than before:
--   tasks_key_pending walks one key's runnable tasks in claim order and lists the keys that
--   have any (a skip scan); tasks_key_running counts one key's running tasks.
-- * queue_tokens: each rate-limited queue's token bucket, shared by every process, updated in
--   the claim's transaction.
-- * schedules: cron schedules, from config (upserted at start) or the API, with the last firing
--   so a restart catches up on what was missed.

ALTER TABLE tasks ADD COLUMN concurrency_key TEXT;

CREATE INDEX tasks_key_pending ON tasks (queue, concurrency_key, priority DESC, run_at)
    WHERE status = 'pending' AND concurrency_key IS NOT NULL;
CREATE INDEX tasks_key_running ON tasks (queue, concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;

CREATE TABLE queue_tokens (
    queue      TEXT    PRIMARY KEY,
    tokens     REAL    NOT NULL,      -- tokens in the bucket at updated_at
    updated_at INTEGER NOT NULL       -- unix ms of the last refill
) WITHOUT ROWID;

CREATE TABLE schedules (
    name         TEXT    PRIMARY KEY,
    cron         TEXT    NOT NULL,
    timezone     TEXT    NOT NULL,    -- IANA name
    task         TEXT    NOT NULL,    -- JSON: the task as POST /v1/tasks takes it, without a key
    catch_up     TEXT    NOT NULL CHECK (catch_up = 'skip' OR catch_up = 'latest' OR catch_up = 'all'),
    catch_up_max INTEGER NOT NULL CHECK (catch_up_max >= 1),
    source       TEXT    NOT NULL CHECK (source = 'config' OR source = 'api'),
    last_fire_at INTEGER,             -- unix ms of the latest firing handled (fired or skipped)
    last_task_id TEXT,                -- the task the latest firing enqueued
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
