-- A page of tasks, newest first. $5 is the last id of the previous page: ids are UUID v7, so
-- tasks added meanwhile sort above it and never shift a later page. $1 user, $2 status, $3 queue,
-- $4 kind (each NULL: any), $6 page size.
SELECT * FROM tasks
WHERE ($1::text IS NULL OR user_id = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR queue = $3)
  AND ($4::text IS NULL OR kind = $4)
  AND ($5::uuid IS NULL OR id < $5)
ORDER BY id DESC
LIMIT $6
