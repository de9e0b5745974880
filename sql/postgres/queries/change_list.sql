-- Up to $2 changes after $1 (counted before the filters $3 user and $4 queue), with the task as
-- it is now and the size of its payload and result. A change of a task pruned since is left out.
-- Only as many as a page can hold are sent: the caller keeps changes while their content_bytes
-- stay within $5 (the first always) and must see the first it refuses (the page's cut), so a
-- change whose predecessors already hold more than $5 is left here, apart from the second.
SELECT *
FROM (SELECT c.seq AS change_seq, c.status AS change_status, s.content_bytes,
             row_number() OVER (ORDER BY c.seq) AS page_n,
             (sum(s.content_bytes) OVER (ORDER BY c.seq))::int8 - s.content_bytes AS page_before,
             t.*
      FROM (SELECT seq, task_id, status FROM task_changes WHERE seq > $1 ORDER BY seq LIMIT $2)
               AS c
      JOIN tasks AS t ON t.id = c.task_id
      CROSS JOIN LATERAL (SELECT (octet_length(t.payload::text)
                                  + coalesce(octet_length(t.result::text), 0))::int8
                                     AS content_bytes) AS s
      WHERE ($3::text IS NULL OR t.user_id = $3)
        AND ($4::text IS NULL OR t.queue = $4)) AS w
WHERE page_before <= $5 OR page_n <= 2
ORDER BY change_seq
