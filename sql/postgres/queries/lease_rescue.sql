-- Ends or frees tasks whose lease expired, as crate::queue::rescue decided: $1 the new status
-- for every task of $4 (ids) at the attempts $5 they had when they were judged; guarded by that
-- state and attempt, so a task finished or claimed again meanwhile is never overwritten.
-- $2 the error to record, $3 now.
UPDATE tasks AS t
SET status = $1, lease_owner = NULL, lease_expires_at = NULL, last_error = $2,
    run_at = CASE WHEN $1 = 'pending' THEN $3 ELSE t.run_at END,
    completed_at = CASE WHEN $1 = 'pending' THEN NULL ELSE $3 END,
    updated_at = $3
FROM unnest($4::uuid[], $5::int8[]) AS x(id, attempts)
WHERE t.id = x.id AND t.attempts = x.attempts AND t.status = 'running'
  AND t.lease_expires_at < $3
RETURNING t.*
