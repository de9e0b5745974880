-- Heartbeat: extend every lease :owner holds. A task missing from the answer is no longer ours.
UPDATE tasks
SET lease_expires_at = :expires_at
WHERE lease_owner = :owner AND status = 'running'
RETURNING id, attempts, cancel_requested
