-- 1 when the owner has written to task :id past what its running attempt read (a message sent
-- after the attempt's last look at its inbox), else 0. Asked in the writer's transaction just
-- before a wait is written, so no message can come between the two.
SELECT EXISTS (
    SELECT 1 FROM messages
    WHERE task_id = :id AND author = 'user'
      AND id > (SELECT inbox_read FROM tasks WHERE id = :id)
) AS unread
