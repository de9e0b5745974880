-- Claim the admitted tasks :rowids (a JSON array), those still pending, for worker :owner: the
-- same new attempt as task_claim.sql starts, in one statement.
UPDATE OR FAIL tasks
SET status = 'running',
    attempts = attempts + 1,
    lease_owner = :owner,
    lease_expires_at = :now + :lease_ms,
    started_at = :now,
    inbox_read = inbox_cursor,
    inbox_claimed = (SELECT coalesce(max(id), 0) FROM messages),
    wait_until = NULL,
    parked = NULL,
    updated_at = :now
WHERE rowid IN (SELECT value FROM json_each(:rowids)) AND status = 'pending'
RETURNING *
