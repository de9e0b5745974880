-- Users own tasks by a stable id, tokens are rows of their own, and task tokens belong to one
-- claim.
--
-- * Until now a users row was one token, and a task's owner was a name: a second
--   `spool token create --user admin` made another user that read the first admin's tasks.
--   Now `users` has one row per user and `tokens` one row per token of a user. Token users
--   (issuer NULL) have unique names; JWT users are keyed by (issuer, subject) and never share a
--   row with a token user of the same name. `tasks.user_id` holds `users.id` (as text: the
--   column keeps its type, so the table is not rebuilt).
-- * Old rows: one user per name, with the tokens of that name. A name that had admin and
--   non-admin tokens keeps the name and its tasks for the admin tokens; its non-admin tokens move
--   to a new user `NAME (non-admin)` that owns nothing, so they no longer read what the admin
--   wrote. A task owner with no token (`spool enqueue --user bob`) gets a user of that name; the
--   name `admin` is always an admin.
-- * Task tokens record the claim they were issued for (owner and start of the attempt) and are
--   deleted by a trigger whenever their attempt ends (any way out of `running`, or a new claim),
--   so a retried task's attempt 1 cannot use the old attempt 1's token.

CREATE TABLE users_new (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,   -- token users: the name given to spool token create;
                                    -- JWT users: the value of the user claim (e.g. sub)
    issuer      TEXT,               -- NULL for token users; the JWT issuer for JWT users
    is_admin    INTEGER NOT NULL DEFAULT 0 CHECK (is_admin = 0 OR is_admin = 1),
    created_at  INTEGER NOT NULL
);

INSERT INTO users_new (name, issuer, is_admin, created_at)
SELECT name, NULL, max(is_admin), min(created_at) FROM users GROUP BY name ORDER BY min(id);

INSERT INTO users_new (name, issuer, is_admin, created_at)
SELECT name || ' (non-admin)', NULL, 0, min(created_at) FROM users
GROUP BY name HAVING max(is_admin) = 1 AND min(is_admin) = 0
ORDER BY min(id);

INSERT INTO users_new (name, issuer, is_admin, created_at)
SELECT DISTINCT t.user_id, NULL, t.user_id = 'admin', 0 FROM tasks t
WHERE NOT EXISTS (SELECT 1 FROM users_new u WHERE u.name = t.user_id);

CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users_new (id) ON DELETE CASCADE,
    token_hash  TEXT    NOT NULL UNIQUE,  -- hex SHA-256 of the bearer token, never the token
    created_at  INTEGER NOT NULL
);

INSERT INTO tokens (user_id, token_hash, created_at)
SELECT (SELECT u.id FROM users_new u
        WHERE u.name = CASE
            WHEN o.is_admin = 0
                 AND EXISTS (SELECT 1 FROM users a WHERE a.name = o.name AND a.is_admin = 1)
            THEN o.name || ' (non-admin)'
            ELSE o.name END),
       o.token_hash, o.created_at
FROM users o ORDER BY o.id;

UPDATE tasks SET user_id = (SELECT CAST(u.id AS TEXT) FROM users_new u WHERE u.name = tasks.user_id);

DROP TABLE users;
ALTER TABLE users_new RENAME TO users;   -- tokens' foreign key follows the rename

CREATE UNIQUE INDEX users_token_name ON users (name) WHERE issuer IS NULL;
CREATE UNIQUE INDEX users_jwt ON users (issuer, name) WHERE issuer IS NOT NULL;
CREATE INDEX tokens_user ON tokens (user_id);

-- Task tokens of attempts still running when the old spool stopped are dropped: a restart
-- released those attempts anyway.
DROP TABLE task_tokens;
CREATE TABLE task_tokens (
    token_hash  TEXT    PRIMARY KEY,              -- hex SHA-256 of Spool-Task-Token
    task_id     TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    lease_owner TEXT    NOT NULL,                 -- the claim: worker, attempt and start time
    started_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX task_tokens_task ON task_tokens (task_id);

-- An attempt ends when its task leaves `running` (complete, fail, retry later, cancel, lease
-- rescue, release at shutdown) or is claimed again: its tokens go with it, whichever statement
-- did it. Only UPDATEs that set one of these columns consider the trigger at all.
CREATE TRIGGER task_tokens_end_with_attempt
AFTER UPDATE OF status, attempts, lease_owner ON tasks
WHEN OLD.status = 'running'
     AND (NEW.status <> 'running' OR NEW.attempts <> OLD.attempts
          OR NEW.lease_owner IS NOT OLD.lease_owner)
BEGIN
    DELETE FROM task_tokens WHERE task_id = OLD.id;
END;

-- The operator view shows the owner's name (user_id is now an id).
DROP VIEW task_overview;
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
        FROM users u WHERE u.id = tasks.user_id)                         AS user
FROM tasks;
