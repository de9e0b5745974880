-- The running attempt $3 (of worker $4, when named) of task $1 saves checkpoint $2 at $5; the
-- owner's messages it has read are behind the task from now on.
UPDATE tasks
SET checkpoint = $2::text::json, inbox_cursor = inbox_read, updated_at = $5
WHERE id = $1 AND status = 'running' AND attempts = $3 AND ($4::text IS NULL OR lease_owner = $4::text)
RETURNING *
