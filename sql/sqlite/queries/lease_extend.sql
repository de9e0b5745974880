-- Heartbeat: extend the leases :owner holds on the tasks :ids names (a JSON array of ids). A
-- task missing from the answer is no longer ours; a lease held but not named runs out.
UPDATE tasks
SET lease_expires_at = :expires_at
WHERE lease_owner = :owner AND status = 'running'
  AND id IN (SELECT value FROM json_each(:ids))
RETURNING id, attempts, cancel_requested
