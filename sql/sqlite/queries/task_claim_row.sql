-- Claim the one task :rowid, still pending, for worker :owner (an admitted task; see
-- task_claim.sql for the rest).
UPDATE OR FAIL tasks
SET status = 'running',
    attempts = attempts + 1,
    lease_owner = :owner,
    lease_expires_at = :now + :lease_ms,
    started_at = :now,
    updated_at = :now
WHERE rowid = :rowid AND status = 'pending'
RETURNING *
