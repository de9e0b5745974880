-- Heartbeat: extend every lease $1 holds to $2. A task missing from the answer is no longer
-- ours. Rows are locked in id order, as the rescue takes them, so the two never deadlock.
UPDATE tasks AS t
SET lease_expires_at = $2
FROM (SELECT id FROM tasks WHERE lease_owner = $1 AND status = 'running'
      ORDER BY id FOR UPDATE) AS mine
WHERE t.id = mine.id
RETURNING t.id, t.attempts, t.cancel_requested
