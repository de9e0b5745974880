-- A page of tasks, newest first. $5 is the last id of the previous page: ids are UUID v7, so
-- tasks added meanwhile sort above it and never shift a later page. $1 user, $2 status, $3 queue,
-- $4 kind (each NULL: any), $6 page size.
-- Only as many as a page can hold are sent: the caller keeps tasks while their content_bytes
-- (payload and result) stay within $7 (the first always) and must see the first it refuses (the
-- page is cut there), so a task whose predecessors already hold more than $7 is left here, apart
-- from the second.
SELECT *
FROM (SELECT s.content_bytes,
             row_number() OVER (ORDER BY t.id DESC) AS page_n,
             (sum(s.content_bytes) OVER (ORDER BY t.id DESC))::int8 - s.content_bytes
                 AS page_before,
             t.*
      FROM (SELECT * FROM tasks
            WHERE ($1::text IS NULL OR user_id = $1)
              AND ($2::text IS NULL OR status = $2)
              AND ($3::text IS NULL OR queue = $3)
              AND ($4::text IS NULL OR kind = $4)
              AND ($5::uuid IS NULL OR id < $5)
            ORDER BY id DESC
            LIMIT $6) AS t
      CROSS JOIN LATERAL (SELECT (octet_length(t.payload::text)
                                  + coalesce(octet_length(t.result::text), 0))::int8
                                     AS content_bytes) AS s) AS w
WHERE page_before <= $7 OR page_n <= 2
ORDER BY id DESC
