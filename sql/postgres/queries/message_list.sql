-- A task's messages after the cursor $2 (a seq), oldest first, with the size of each content.
SELECT seq, kind, content::text AS content, created_at FROM messages
WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
