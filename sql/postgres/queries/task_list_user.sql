-- A page of one user's tasks, newest first (the tasks_user index). Parameters as task_list.
SELECT * FROM tasks
WHERE user_id = $1
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR queue = $3)
  AND ($4::text IS NULL OR kind = $4)
  AND ($5::uuid IS NULL OR id < $5)
ORDER BY id DESC
LIMIT $6
