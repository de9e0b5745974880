-- A task's messages after a cursor, oldest first.
-- :author NULL: every author.
SELECT * FROM messages
WHERE task_id = :task_id AND id > :after AND (:author IS NULL OR author = :author)
ORDER BY id LIMIT (SELECT :limit)
