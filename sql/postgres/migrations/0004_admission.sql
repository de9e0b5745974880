-- Admission control and schedules (issue 16); the SQLite store's 0012_admission.sql in
-- PostgreSQL's types (see there for why each part exists).

ALTER TABLE tasks ADD COLUMN concurrency_key text;

CREATE INDEX tasks_key_pending ON tasks (queue, concurrency_key, priority DESC, run_at, id)
    WHERE status = 'pending' AND concurrency_key IS NOT NULL;
CREATE INDEX tasks_key_running ON tasks (queue, concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;

CREATE TABLE queue_tokens (
    queue      text             PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at bigint           NOT NULL
);

CREATE TABLE schedules (
    name         text    PRIMARY KEY,
    cron         text    NOT NULL,
    timezone     text    NOT NULL,
    task         json    NOT NULL,
    catch_up     text    NOT NULL CHECK (catch_up IN ('skip', 'latest', 'all')),
    catch_up_max bigint  NOT NULL CHECK (catch_up_max >= 1),
    source       text    NOT NULL CHECK (source IN ('config', 'api')),
    last_fire_at bigint,
    last_task_id text,
    created_at   bigint  NOT NULL,
    updated_at   bigint  NOT NULL
);
