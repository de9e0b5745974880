-- Claim the admitted tasks $4 (still pending) for worker $1 at $2 with leases of $3 ms: the
-- same new attempt as task_claim.sql starts.
UPDATE tasks AS t
SET status = 'running',
    attempts = t.attempts + 1,
    lease_owner = $1,
    lease_expires_at = $2::int8 + $3::int8,
    started_at = $2,
    inbox_read = t.inbox_cursor,
    inbox_claimed = t.inbox_last,
    wait_until = NULL,
    updated_at = $2
WHERE t.id = ANY($4::uuid[]) AND t.status = 'pending'
RETURNING t.*
