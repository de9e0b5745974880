-- Per-attempt tokens handed to webhook receivers, and the restore drill's results.

CREATE TABLE task_tokens (
    token_hash  TEXT    PRIMARY KEY,              -- hex SHA-256 of Spool-Task-Token
    task_id     TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX task_tokens_task ON task_tokens (task_id);

CREATE TABLE drills (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ran_at      INTEGER NOT NULL,
    passed      INTEGER NOT NULL CHECK (passed IN (0, 1)),
    lag_ms      INTEGER,
    verdict     TEXT    NOT NULL,
    details     TEXT    NOT NULL                  -- JSON report
);
