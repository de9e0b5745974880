-- spool's PostgreSQL schema, version 3. Interactive tasks (SQLite's 0011): `waiting` tasks parked until their owner writes to them or
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

-- The operator views of 0002, with waiting tasks: a count per queue and the wait's time left.
CREATE OR REPLACE VIEW task_overview AS
WITH clock AS (SELECT extract(epoch FROM now()) * 1000 AS now_ms)
SELECT t.id,
       t.queue,
       t.kind,
       t.status,
       t.attempts || '/' || t.max_attempts                               AS attempts,
       t.priority,
       to_char(timestamp 'epoch' + t.created_at * interval '1 millisecond',
               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')                          AS created,
       to_char(timestamp 'epoch' + t.run_at * interval '1 millisecond',
               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')                          AS run_at,
       round((clock.now_ms - t.created_at) / 1000.0, 1)                  AS age_s,
       CASE WHEN t.status = 'running'
            THEN round((t.lease_expires_at - clock.now_ms) / 1000.0, 1) END
                                                                          AS lease_left_s,
       t.lease_owner,
       t.last_error,
       t.user_id,
       u.name || CASE WHEN u.issuer IS NULL THEN '' ELSE ' (' || u.issuer || ')' END
                                                                          AS "user",
       CASE WHEN t.status = 'waiting'
            THEN round((t.wait_until - clock.now_ms) / 1000.0, 1) END    AS wait_left_s
FROM tasks AS t
CROSS JOIN clock
LEFT JOIN users AS u ON u.id::text = t.user_id;

CREATE OR REPLACE VIEW queue_depth AS
WITH clock AS (SELECT (extract(epoch FROM now()) * 1000)::bigint AS now_ms),
     counts AS (
         SELECT t.queue,
                count(*) FILTER (WHERE t.status = 'pending' AND t.run_at <= clock.now_ms)
                    AS pending,
                count(*) FILTER (WHERE t.status = 'pending' AND t.run_at > clock.now_ms)
                    AS scheduled,
                count(*) FILTER (WHERE t.status = 'running') AS running,
                count(*) FILTER (WHERE t.status = 'completed' AND t.completed_at IS NOT NULL)
                    AS completed,
                count(*) FILTER (WHERE t.status = 'failed' AND t.completed_at IS NOT NULL)
                    AS failed,
                count(*) FILTER (WHERE t.status = 'canceled' AND t.completed_at IS NOT NULL)
                    AS canceled,
                count(*) FILTER (WHERE t.status = 'waiting') AS waiting
         FROM tasks AS t CROSS JOIN clock
         GROUP BY t.queue),
     names AS (SELECT queue AS name FROM counts UNION SELECT name FROM queues)
SELECT n.name AS queue,
       CASE WHEN q.paused THEN 1 ELSE 0 END AS paused,
       coalesce(c.pending, 0)   AS pending,
       coalesce(c.scheduled, 0) AS scheduled,
       coalesce(c.running, 0)   AS running,
       coalesce(c.completed, 0) AS completed,
       coalesce(c.failed, 0)    AS failed,
       coalesce(c.canceled, 0)  AS canceled,
       coalesce(c.waiting, 0)   AS waiting
FROM names AS n
LEFT JOIN counts AS c ON c.queue = n.name
LEFT JOIN queues AS q ON q.name = n.name
ORDER BY n.name;
