-- A task's messages after the cursor $2 (a seq), oldest first, at most $3; $4 NULL: every author.
-- Only as many as a page can hold are sent: the caller keeps messages while their content stays
-- within $5 bytes (the first always), so a message whose predecessors already hold more than $5
-- is left here, apart from the second (the one that tells the caller the first filled the page).
SELECT seq, kind, author, content, created_at
FROM (SELECT seq, kind, author, content, created_at,
             row_number() OVER (ORDER BY seq) AS n,
             sum(octet_length(content)) OVER (ORDER BY seq) - octet_length(content) AS before
      FROM (SELECT seq, kind, author, content::text AS content, created_at FROM messages
            WHERE task_id = $1 AND seq > $2 AND ($4::text IS NULL OR author = $4::text)
            ORDER BY seq LIMIT $3) AS m) AS w
WHERE before <= $5 OR n <= 2
ORDER BY seq
