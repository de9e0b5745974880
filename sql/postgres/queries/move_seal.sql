-- `spool migrate-to-postgres`, after the rows are in: each task's message position goes on after
-- its last copied message (the SQLite ids, global there, so a task's positions have gaps: those
-- are counted as skipped, and the messages it holds stay message_seq - message_seq_skipped);
-- its inbox_last (and, for a running task, inbox_claimed) is its owner's newest message; the
-- ids of users and tokens go on after the largest copied; the triggers of `tasks` are on again.
-- The change log needs nothing: its next position is max(seq) + 1.
UPDATE tasks AS t
SET message_seq = m.last, message_seq_skipped = m.last - m.n, inbox_last = m.user_last,
    inbox_claimed = m.user_last
FROM (SELECT task_id, max(seq) AS last, count(*) AS n,
             coalesce(max(seq) FILTER (WHERE author = 'user'), 0) AS user_last
      FROM messages GROUP BY task_id) AS m
WHERE t.id = m.task_id;
SELECT setval(pg_get_serial_sequence('users', 'id'),
              coalesce((SELECT max(id) FROM users), 0) + 1, false);
SELECT setval(pg_get_serial_sequence('tokens', 'id'),
              coalesce((SELECT max(id) FROM tokens), 0) + 1, false);
ALTER TABLE tasks ENABLE TRIGGER USER;
