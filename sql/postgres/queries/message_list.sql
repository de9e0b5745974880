-- A task's messages after the cursor $2 (a seq), oldest first, with the size of each content;
-- $4 NULL: every author.
SELECT seq, kind, author, content::text AS content, created_at FROM messages
WHERE task_id = $1 AND seq > $2 AND ($4::text IS NULL OR author = $4::text) ORDER BY seq LIMIT $3
