-- A per-attempt token for a webhook receiver (stored hashed), fenced by the claim: it is written
-- only while that very claim (task, attempt, worker, start time) still runs, so a late insert
-- cannot outlive its attempt. The trigger of migration 0007 deletes it when the attempt ends.
INSERT INTO task_tokens (token_hash, task_id, attempt, lease_owner, started_at, created_at)
SELECT :token_hash, id, attempts, lease_owner, started_at, :now
FROM tasks
WHERE id = :task_id AND status = 'running' AND attempts = :attempt
  AND lease_owner = :owner AND started_at = :started_at
