-- Heartbeat: extend the leases $1 holds on the tasks $3 names, to $2. A task missing from the
-- answer is no longer ours; a lease held but not named runs out. Rows are locked in id order,
-- as a group of outcomes locks them (task_finish_many.sql), so the two never deadlock (a
-- rescue passes over locked rows). FOR NO KEY UPDATE, the UPDATE's own lock: a stream token
-- made for the task meanwhile (its foreign key's check) need not wait for it.
UPDATE tasks AS t
SET lease_expires_at = $2
FROM (SELECT id FROM tasks WHERE lease_owner = $1 AND status = 'running' AND id = ANY($3)
      ORDER BY id FOR NO KEY UPDATE) AS mine
WHERE t.id = mine.id
RETURNING t.id, t.attempts, t.cancel_requested
