INSERT INTO messages (task_id, kind, content, created_at, author)
VALUES (:task_id, :kind, :content, :now, :author)
RETURNING id
