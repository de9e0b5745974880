-- The running attempt saves its checkpoint, fenced by attempt (and owner, for a worker's own
-- write); the owner's messages it has read are behind the task from now on.
UPDATE tasks
SET checkpoint = :checkpoint, inbox_cursor = inbox_read, updated_at = :now
WHERE id = :id AND status = 'running' AND attempts = :attempt
  AND (:owner IS NULL OR lease_owner = :owner)
RETURNING *
