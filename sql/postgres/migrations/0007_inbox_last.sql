-- A wait does not miss the owner's message written while its attempt ran (issue 13).
--
-- tasks.inbox_last is the position of the owner's newest message to the task, set under the
-- task's row lock by the statement that hands out the message's position (message_seq_next.sql).
-- An attempt that ends in a wait while inbox_last is past what it read (inbox_read) has an
-- unread message: the task goes back to pending at once, woken by it, instead of parking until
-- the timeout. A column of the row and not a look at `messages`: the finish reads it from the
-- row version it updates, so a message committed while the finish waited for the row lock is
-- seen (a subquery would read the statement's older snapshot).
ALTER TABLE tasks ADD COLUMN inbox_last bigint NOT NULL DEFAULT 0;

UPDATE tasks AS t
SET inbox_last = m.last
FROM (SELECT task_id, max(seq) AS last FROM messages WHERE author = 'user' GROUP BY task_id) AS m
WHERE t.id = m.task_id;
