-- The running attempt has read the owner's messages up to :upto.
UPDATE tasks
SET inbox_read = max(inbox_read, :upto)
WHERE id = :id AND status = 'running' AND attempts = :attempt
  AND (:owner IS NULL OR lease_owner = :owner)
