-- A user by id (a task's owner: tasks.user_id holds this id as text).
SELECT id, name, is_admin FROM users WHERE id = :id
