-- $1 task, $2 seq, $3 kind, $4 content (JSON text), $5 now.
INSERT INTO messages (task_id, seq, kind, content, created_at)
VALUES ($1, $2, $3, $4::text::json, $5)
