INSERT INTO messages (task_id, kind, content, created_at)
VALUES (:task_id, :kind, :content, :now)
RETURNING id
