-- How many messages a task has (no row: none).
SELECT n FROM task_message_counts WHERE task_id = :task_id
