-- $1 task, $2 seq, $3 kind, $4 content (JSON text), $5 now, $6 author.
INSERT INTO messages (task_id, seq, kind, content, created_at, author)
VALUES ($1, $2, $3, $4::text::json, $5, $6)
