-- `spool migrate-to-postgres`, the first statements of its one transaction. One copy at a time
-- (advisory lock "spool-move"); the tables it fills are locked against writers (a `spool serve`
-- started meanwhile waits, then sees the copied users and makes no admin of its own); the
-- triggers of `tasks` are off while it copies, since the change log and the usage rows are
-- copied as they are on SQLite instead of being made again. All of it is undone by a rollback.
SELECT pg_advisory_xact_lock(7306996425318424323);
LOCK TABLE users, tokens, queues, tasks, messages, task_tokens, task_changes,
    task_changes_unnumbered, user_usage,
    stream_tokens, schedules, queue_tokens IN EXCLUSIVE MODE;
ALTER TABLE tasks DISABLE TRIGGER USER;
