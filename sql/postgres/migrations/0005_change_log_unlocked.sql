-- Writers no longer take turns (issue 13).
--
-- Until now every transaction that changed a task's state took one advisory lock and held it
-- through its commit (see 0001), so such transactions committed one at a time, cluster-wide,
-- each waiting for the fsync of the one before; and each one that moved a task in or out of
-- the unfinished set updated its owner's user_usage row, which also stays locked to commit.
-- Now neither is on a writer's way:
--
-- The change log behind /v1/events
-- * Writers append their changes to task_changes_unnumbered, without a lock. Nothing there
--   has a position yet: identity values are handed out before commit, in no useful order.
-- * spool_number_changes() hands out positions after commit: under the lock the writers used
--   to take (now taken only here), it moves committed changes into task_changes, numbered
--   max(seq) + 1, + 2, ... Numberings take turns and each sees what the one before it
--   committed, so positions still become visible in order and stay contiguous: a reader past
--   position N never finds a change at or below N later. A change that commits late is
--   numbered after it commits, later than changes that committed before it.
-- * spool numbers before every read of the log (/v1/events) and before pruning it, so the
--   unnumbered table holds at most what committed since the last of those.
--
-- Per-user usage (the quotas of [limits])
-- * Triggers add each statement's change of a user's usage to the user's row in
--   user_usage_shards for the session that runs it (pg_backend_pid()), not to user_usage. A
--   session runs one transaction at a time, so no two transactions ever wait for one such row.
--   A user's usage is their user_usage row plus all their shards.
-- * A quota check (spool_check_usage, below) locks the user's user_usage row first, then reads
--   it with the shards, in a statement that starts after the lock is held. Every write that
--   adds to a user's usage under a quota checks it after writing, so it holds that lock until
--   it commits: the next check of the user, on any host, waits for it and then sees
--   what it added. A change that takes from usage (a finish, a delete) takes no such lock; a
--   check that misses one not yet committed sees more usage than there is, never less.
-- * spool_fold_usage() moves the shards of sessions that have ended into user_usage (the
--   pruner calls it), so there are only as many shards as sessions that are connected.

CREATE TABLE task_changes_unnumbered (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id uuid   NOT NULL,
    status  text   NOT NULL,
    at      bigint NOT NULL
);

CREATE OR REPLACE FUNCTION spool_task_changes_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_changes_unnumbered (task_id, status, at)
    SELECT n.id, n.status, n.updated_at FROM new_rows n ORDER BY n.id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION spool_task_changes_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_changes_unnumbered (task_id, status, at)
    VALUES (NEW.id, NEW.status, NEW.updated_at);
    RETURN NULL;
END
$$;

-- Numbers up to max_rows committed changes (oldest recorded first); returns how many. Must run
-- in a transaction of its own (READ COMMITTED: each statement sees what committed before it).
CREATE FUNCTION spool_number_changes(max_rows bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM task_changes_unnumbered) THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(7306996425318424321);
    WITH moved AS (
        DELETE FROM task_changes_unnumbered
        WHERE id IN (SELECT id FROM task_changes_unnumbered ORDER BY id LIMIT max_rows)
        RETURNING id, task_id, status, at)
    INSERT INTO task_changes (seq, task_id, status, at)
    SELECT b.base + row_number() OVER (ORDER BY m.id), m.task_id, m.status, m.at
    FROM moved m, (SELECT coalesce(max(seq), 0) AS base FROM task_changes) AS b;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE TABLE user_usage_shards (
    user_id       text    NOT NULL,
    backend       integer NOT NULL,            -- pg_backend_pid() of the session that wrote it
    unfinished    bigint  NOT NULL,
    payload_bytes bigint  NOT NULL,
    PRIMARY KEY (user_id, backend)
);

-- Adds to user `who`'s shard for this session: the one write every usage trigger makes.
CREATE FUNCTION spool_usage_add(who text, tasks bigint, bytes bigint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO user_usage_shards AS s (user_id, backend, unfinished, payload_bytes)
    VALUES (who, pg_backend_pid(), tasks, bytes)
    ON CONFLICT (user_id, backend) DO UPDATE
        SET unfinished = s.unfinished + excluded.unfinished,
            payload_bytes = s.payload_bytes + excluded.payload_bytes
$$;

CREATE OR REPLACE FUNCTION spool_usage_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM spool_usage_add(n.user_id,
                            count(*) FILTER (WHERE n.status IN ('pending', 'running', 'waiting')),
                            coalesce(sum(octet_length(n.payload::text)), 0))
    FROM new_rows n GROUP BY n.user_id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION spool_usage_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM spool_usage_add(NEW.user_id,
                            CASE WHEN NEW.status IN ('pending', 'running', 'waiting')
                                 THEN 1 ELSE -1 END,
                            0);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION spool_usage_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM spool_usage_add(o.user_id,
                            -count(*) FILTER (WHERE o.status IN ('pending', 'running', 'waiting')),
                            -coalesce(sum(octet_length(o.payload::text)), 0))
    FROM old_rows o GROUP BY o.user_id;
    RETURN NULL;
END
$$;

-- Moves the shards of sessions that are no longer connected into user_usage; returns how many.
-- user_usage rows are locked in user order, as quota checks lock them. A session that starts
-- with the pid of an ended one meanwhile just goes on adding: what the delete takes is the
-- row as it is when deleted.
CREATE FUNCTION spool_fold_usage() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM 1 FROM user_usage
    WHERE user_id IN (SELECT s.user_id FROM user_usage_shards s
                      WHERE s.backend NOT IN (SELECT pid FROM pg_stat_activity
                                              WHERE pid IS NOT NULL))
    ORDER BY user_id
    FOR UPDATE;
    WITH moved AS (
        DELETE FROM user_usage_shards
        WHERE backend NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)
        RETURNING user_id, unfinished, payload_bytes),
    sums AS (
        SELECT user_id, sum(unfinished) AS unfinished, sum(payload_bytes) AS payload_bytes,
               count(*) AS shards
        FROM moved GROUP BY user_id),
    applied AS (
        INSERT INTO user_usage AS u (user_id, unfinished, payload_bytes)
        SELECT user_id, unfinished, payload_bytes FROM sums ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE
            SET unfinished = u.unfinished + excluded.unfinished,
                payload_bytes = u.payload_bytes + excluded.payload_bytes)
    -- (a data-modifying WITH runs to completion whether or not it is read)
    SELECT coalesce(sum(shards), 0) INTO n FROM sums;
    RETURN n;
END
$$;

-- What the user_usage rows held before is kept: they were exact, and the shards start from them.

-- The quota check of an enqueue, after its rows are inserted, as one statement of a pipeline:
-- for each of `users` (in user order) the usage row is locked until commit (made on a user's
-- first task), then read with the shards in a statement that starts after the lock is held (a
-- plpgsql statement sees what committed before it), and held against the limits. Over a limit,
-- it raises SQLSTATE SPQ01 (unfinished tasks) or SPQ02 (payload bytes), so the transaction
-- rolls back.
CREATE FUNCTION spool_check_usage(users text[], max_unfinished bigint, max_bytes bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    who  text;
    used bigint;
    kept bigint;
BEGIN
    FOR who IN SELECT DISTINCT x FROM unnest(users) AS x ORDER BY x LOOP
        INSERT INTO user_usage (user_id) VALUES (who)
        ON CONFLICT (user_id) DO UPDATE SET user_id = excluded.user_id;
        SELECT (u.unfinished + coalesce(s.unfinished, 0))::int8,
               (u.payload_bytes + coalesce(s.payload_bytes, 0))::int8
        INTO used, kept
        FROM user_usage AS u
        CROSS JOIN (SELECT sum(unfinished) AS unfinished, sum(payload_bytes) AS payload_bytes
                    FROM user_usage_shards WHERE user_id = who) AS s
        WHERE u.user_id = who;
        IF used > max_unfinished THEN
            RAISE EXCEPTION 'pending tasks per user' USING ERRCODE = 'SPQ01';
        END IF;
        IF kept > max_bytes THEN
            RAISE EXCEPTION 'payload bytes per user' USING ERRCODE = 'SPQ02';
        END IF;
    END LOOP;
END
$$;
