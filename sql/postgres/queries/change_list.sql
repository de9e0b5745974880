-- Up to $2 changes after $1 (counted before the filters $3 user and $4 queue), with the task as
-- it is now and the size of its payload and result. A change of a task pruned since is left out.
SELECT c.seq AS change_seq, c.status AS change_status,
       (octet_length(t.payload::text) + coalesce(octet_length(t.result::text), 0))::int8
           AS content_bytes,
       t.*
FROM (SELECT seq, task_id, status FROM task_changes WHERE seq > $1 ORDER BY seq LIMIT $2) AS c
JOIN tasks AS t ON t.id = c.task_id
WHERE ($3::text IS NULL OR t.user_id = $3)
  AND ($4::text IS NULL OR t.queue = $4)
ORDER BY c.seq
