-- Per-user and per-task usage for the quotas of [limits] (a request over one is answered 429
-- and writes nothing). Kept by triggers, so every writer keeps them true: any spool process,
-- the pruner, an operator's sqlite3. Statuses are tested with ORs, not IN (...), which would
-- build a temporary b-tree per row (see 0001).

-- A user's unfinished (pending or running) tasks and the bytes of payload of all their stored
-- tasks. Keyed by tasks.user_id, whatever identifies the owner there.
CREATE TABLE user_usage (
    user_id       TEXT    PRIMARY KEY,
    unfinished    INTEGER NOT NULL DEFAULT 0,
    payload_bytes INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

INSERT INTO user_usage (user_id, unfinished, payload_bytes)
SELECT user_id,
       sum(status = 'pending' OR status = 'running'),
       sum(length(CAST(payload AS BLOB)))
FROM tasks GROUP BY user_id;

CREATE TRIGGER tasks_usage_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO user_usage (user_id, unfinished, payload_bytes)
    VALUES (new.user_id, new.status = 'pending' OR new.status = 'running',
            length(CAST(new.payload AS BLOB)))
    ON CONFLICT (user_id) DO UPDATE
        SET unfinished = unfinished + excluded.unfinished,
            payload_bytes = payload_bytes + excluded.payload_bytes;
END;

-- Claims (pending -> running) change nothing here; only a move in or out of the unfinished
-- set writes.
CREATE TRIGGER tasks_usage_status AFTER UPDATE OF status ON tasks
WHEN (old.status = 'pending' OR old.status = 'running')
  != (new.status = 'pending' OR new.status = 'running')
BEGIN
    UPDATE user_usage
    SET unfinished = unfinished
        + CASE WHEN new.status = 'pending' OR new.status = 'running' THEN 1 ELSE -1 END
    WHERE user_id = new.user_id;
END;

CREATE TRIGGER tasks_usage_delete AFTER DELETE ON tasks
BEGIN
    UPDATE user_usage
    SET unfinished = unfinished - (old.status = 'pending' OR old.status = 'running'),
        payload_bytes = payload_bytes - length(CAST(old.payload AS BLOB))
    WHERE user_id = old.user_id;
END;

-- Messages per task. Goes with its task (and its messages) when the task is deleted.
CREATE TABLE task_message_counts (
    task_id TEXT    PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    n       INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO task_message_counts (task_id, n)
SELECT task_id, count(*) FROM messages
WHERE task_id IN (SELECT id FROM tasks)          -- an orphan written with keys off stays out
GROUP BY task_id;

CREATE TRIGGER messages_count_insert AFTER INSERT ON messages
BEGIN
    INSERT INTO task_message_counts (task_id, n) VALUES (new.task_id, 1)
    ON CONFLICT (task_id) DO UPDATE SET n = n + 1;
END;
