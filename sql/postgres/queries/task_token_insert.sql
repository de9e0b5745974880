-- A per-attempt token for a webhook receiver (stored hashed), fenced by the claim: written only
-- while that very claim (task, attempt, worker, start time) still runs. The trigger
-- task_tokens_end_with_attempt deletes it when the attempt ends. $1 hash, $2 task, $3 attempt,
-- $4 owner, $5 started_at, $6 now.
INSERT INTO task_tokens (token_hash, task_id, attempt, lease_owner, started_at, created_at)
SELECT $1, id, attempts, lease_owner, started_at, $6
FROM tasks
WHERE id = $2 AND status = 'running' AND attempts = $3 AND lease_owner = $4 AND started_at = $5
FOR SHARE
