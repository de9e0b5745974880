-- A task's messages after a cursor, oldest first.
SELECT * FROM messages WHERE task_id = :task_id AND id > :after ORDER BY id LIMIT (SELECT :limit)
