-- The running attempt $3 (of worker $4, when named) of task $1 has read the owner's messages up to $2.
UPDATE tasks
SET inbox_read = greatest(inbox_read, $2)
WHERE id = $1 AND status = 'running' AND attempts = $3 AND ($4::text IS NULL OR lease_owner = $4::text)
