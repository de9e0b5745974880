-- A page of one user's tasks, newest first (the tasks_user index). Same cursor rules as task_list.
SELECT * FROM tasks
WHERE user_id = :user_id
  AND (:status IS NULL OR status = :status)
  AND (:queue IS NULL OR queue = :queue)
  AND (:kind IS NULL OR kind = :kind)
  AND (:cursor IS NULL OR id < :cursor)
ORDER BY id DESC
LIMIT (SELECT :limit)
