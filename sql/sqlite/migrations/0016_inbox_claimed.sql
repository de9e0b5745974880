-- A wait does not miss the owner's message written while its attempt ran.
--
-- tasks.inbox_claimed is the newest message id of the database when the running attempt was
-- claimed (message ids are global, AUTOINCREMENT: a later message has a larger id). An attempt that ends in a wait while an
-- owner's message past both that and what the attempt read (inbox_read) exists missed a message
-- written while it ran: the task goes back to pending at once, woken by it, instead of parking
-- until the timeout. Messages that were there before the attempt began and that it left unread
-- do not end its wait (a task that ignores its inbox would otherwise be started again and again).
ALTER TABLE tasks ADD COLUMN inbox_claimed INTEGER NOT NULL DEFAULT 0;

UPDATE tasks
SET inbox_claimed = (SELECT coalesce(max(id), 0) FROM messages)
WHERE status = 'running';
