-- The task and attempt a token was issued for, and whether that claim still holds a lease at $2.
SELECT k.task_id, k.attempt, k.started_at,
       (t.status = 'running' AND t.attempts = k.attempt AND t.lease_owner = k.lease_owner
        AND t.started_at = k.started_at AND t.lease_expires_at > $2) AS live
FROM task_tokens k JOIN tasks t ON t.id = k.task_id
WHERE k.token_hash = $1
