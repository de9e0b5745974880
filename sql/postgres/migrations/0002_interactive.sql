-- Interactive tasks (SQLite's 0011): `waiting` tasks parked until their owner writes to them or
-- their wait times out, checkpoints, message authors, and read tokens for one task's streams.
-- Waiting tasks are unfinished: they count against their owner's pending-task quota.

ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'running', 'waiting', 'completed', 'failed', 'canceled'));
ALTER TABLE tasks
    ADD COLUMN checkpoint   json,                       -- saved by an attempt; later ones start with it
    ADD COLUMN wait_until   bigint,                     -- while waiting: when the wait times out
    ADD COLUMN wake_reason  text,                       -- 'message' or 'timeout': why a wait ended
    ADD COLUMN inbox_cursor bigint NOT NULL DEFAULT 0,  -- the owner's messages up to here are behind the task
    ADD COLUMN inbox_read   bigint NOT NULL DEFAULT 0;  -- ... and up to here were read by the running attempt

-- Waits that time out: the claim's rescue step wakes them.
CREATE INDEX tasks_waiting ON tasks (wait_until) WHERE status = 'waiting';

ALTER TABLE messages ADD COLUMN author text NOT NULL DEFAULT 'task'
    CHECK (author IN ('task', 'user'));

CREATE TABLE stream_tokens (
    token_hash text    PRIMARY KEY,                -- hex SHA-256 of the token
    task_id    uuid    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    expires_at bigint  NOT NULL
);
CREATE INDEX stream_tokens_expiry ON stream_tokens (expires_at);
CREATE INDEX stream_tokens_task ON stream_tokens (task_id);

CREATE OR REPLACE FUNCTION spool_usage_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_usage AS u (user_id, unfinished, payload_bytes)
    SELECT n.user_id,
           count(*) FILTER (WHERE n.status IN ('pending', 'running', 'waiting')),
           sum(octet_length(n.payload::text))
    FROM new_rows n GROUP BY n.user_id
    ON CONFLICT (user_id) DO UPDATE
        SET unfinished = u.unfinished + excluded.unfinished,
            payload_bytes = u.payload_bytes + excluded.payload_bytes;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION spool_usage_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE user_usage
    SET unfinished = unfinished
        + CASE WHEN NEW.status IN ('pending', 'running', 'waiting') THEN 1 ELSE -1 END
    WHERE user_id = NEW.user_id;
    RETURN NULL;
END
$$;
DROP TRIGGER tasks_usage_status ON tasks;
CREATE TRIGGER tasks_usage_status AFTER UPDATE OF status ON tasks
FOR EACH ROW
WHEN ((OLD.status IN ('pending', 'running', 'waiting'))
      <> (NEW.status IN ('pending', 'running', 'waiting')))
EXECUTE FUNCTION spool_usage_status();

CREATE OR REPLACE FUNCTION spool_usage_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE user_usage AS u
    SET unfinished = u.unfinished - d.unfinished,
        payload_bytes = u.payload_bytes - d.bytes
    FROM (SELECT o.user_id,
                 count(*) FILTER (WHERE o.status IN ('pending', 'running', 'waiting')) AS unfinished,
                 sum(octet_length(o.payload::text)) AS bytes
          FROM old_rows o GROUP BY o.user_id) AS d
    WHERE u.user_id = d.user_id;
    RETURN NULL;
END
$$;
