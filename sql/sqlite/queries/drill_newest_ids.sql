-- drill_newest_ids: the number of messages (an index-only count over messages_task), the newest
-- task id (UUID v7 ids sort by creation: one seek at the end of the primary key) and the newest
-- message id (the last row).
SELECT (SELECT count(*) FROM messages),
       (SELECT max(id) FROM tasks),
       (SELECT max(id) FROM messages)
