-- The task and attempt a token was issued for, and whether that claim still holds a lease now.
-- A token whose claim ended is gone (deleted with its attempt); one whose lease ran out is
-- refused even before the lease is rescued.
SELECT k.task_id, k.attempt, k.started_at,
       (t.status = 'running' AND t.attempts = k.attempt AND t.lease_owner = k.lease_owner
        AND t.started_at = k.started_at AND t.lease_expires_at > :now) AS live
FROM task_tokens k JOIN tasks t ON t.id = k.task_id
WHERE k.token_hash = :token_hash
