-- Every change of a task's state, in commit order: what GET /v1/events streams and resumes
-- from, whichever process made the change. Triggers write it, so no write path can forget it.
-- seq is the rowid: one more than the greatest, and pruning always keeps the newest row, so a
-- position is never handed out twice; under SQLite's one writer, seq order is commit order.
CREATE TABLE task_changes (
    seq      INTEGER PRIMARY KEY,
    task_id  TEXT NOT NULL,
    status   TEXT NOT NULL,       -- the status it changed to
    at       INTEGER NOT NULL
);

CREATE TRIGGER task_changes_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO task_changes (task_id, status, at) VALUES (new.id, new.status, new.updated_at);
END;

CREATE TRIGGER task_changes_update AFTER UPDATE OF status, cancel_requested ON tasks
WHEN new.status IS NOT old.status OR new.cancel_requested IS NOT old.cancel_requested
BEGIN
    INSERT INTO task_changes (task_id, status, at) VALUES (new.id, new.status, new.updated_at);
END;
