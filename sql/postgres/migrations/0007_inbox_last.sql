-- A wait does not miss the owner's message written while its attempt ran (issue 13).
--
-- tasks.inbox_last is the position of the owner's newest message to the task, set under the
-- task's row lock by the statement that hands out the message's position (message_seq_next.sql);
-- tasks.inbox_claimed is what inbox_last was when the running attempt was claimed. An attempt
-- that ends in a wait while inbox_last is past both what it read (inbox_read) and where it
-- started (inbox_claimed) missed a message written while it ran: the task goes back to pending
-- at once, woken by it, instead of parking until the timeout. Messages that were there before
-- the attempt began and that it left unread do not end its wait (a task that ignores its inbox
-- would otherwise be started again and again). Columns of the row, not a look at `messages`:
-- the finish reads them from the row version it updates, so a message committed while the
-- finish waited for the row lock is seen (a subquery would read the statement's older snapshot).
ALTER TABLE tasks
    ADD COLUMN inbox_last    bigint NOT NULL DEFAULT 0,
    ADD COLUMN inbox_claimed bigint NOT NULL DEFAULT 0;

UPDATE tasks AS t
SET inbox_last = m.last, inbox_claimed = m.last
FROM (SELECT task_id, max(seq) AS last FROM messages WHERE author = 'user' GROUP BY task_id) AS m
WHERE t.id = m.task_id;
