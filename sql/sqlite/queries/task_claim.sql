-- Claim up to :limit runnable tasks of one unpaused queue for worker :owner: highest priority
-- first, then earliest run_at, then first inserted. Each claim starts a new attempt, and the attempt
-- number is the fencing token every later write of that worker must present. OR FAIL: nothing
-- set here can break a constraint, and without ABORT SQLite keeps no statement journal.
UPDATE OR FAIL tasks
SET status = 'running',
    attempts = attempts + 1,
    lease_owner = :owner,
    lease_expires_at = :now + :lease_ms,
    started_at = :now,
    inbox_read = inbox_cursor,
    inbox_claimed = (SELECT coalesce(max(id), 0) FROM messages),
    wait_until = NULL,
    updated_at = :now
WHERE rowid IN (
    -- INDEXED BY: the claim must walk tasks_claim in order, never sort the due rows. The
    -- index holds the rowid, so each claimed row is one seek. LIMIT is a subquery because
    -- SQLite re-prepares a statement whose plan reads a bound LIMIT on every run.
    SELECT rowid FROM tasks INDEXED BY tasks_claim
    WHERE queue = :queue AND status = 'pending' AND parked IS NULL AND run_at <= :now
      AND NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = :queue AND q.paused = 1)
    ORDER BY priority DESC, run_at, rowid
    LIMIT (SELECT :limit))
RETURNING *
