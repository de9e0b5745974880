-- A page of tasks, newest first. :cursor is the last id of the previous page: ids are UUID v7,
-- so tasks added meanwhile sort above the cursor and never shift a later page.
SELECT * FROM tasks
WHERE (:user_id IS NULL OR user_id = :user_id)
  AND (:status IS NULL OR status = :status)
  AND (:queue IS NULL OR queue = :queue)
  AND (:kind IS NULL OR kind = :kind)
  AND (:cursor IS NULL OR id < :cursor)
ORDER BY id DESC
LIMIT (SELECT :limit)
