-- The change-log row of a task just inserted (pending), at its insertion time. Written by the
-- insert itself since 0014; insert.rs repeats the row for a statement of many tasks.
INSERT INTO task_changes (task_id, status, at) VALUES (:task_id, 'pending', :now)
