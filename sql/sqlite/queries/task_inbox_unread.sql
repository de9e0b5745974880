-- 1 when the owner has written to task :id since its running attempt was claimed and past what
-- the attempt read (a message sent after its last look at the inbox), else 0. Asked in the
-- writer's transaction just before a wait is written, so no message can come between the two.
SELECT EXISTS (
    SELECT 1 FROM messages
    WHERE task_id = :id AND author = 'user'
      AND id > (SELECT max(inbox_read, inbox_claimed) FROM tasks WHERE id = :id)
) AS unread
