-- End an attempt, fenced by owner and attempt number: a worker that lost its lease matches no
-- row and changes nothing. :status is the new status; :run_at (retry) and :error may be NULL;
-- :uncount is 1 when the attempt is given back (shutdown) rather than spent.
UPDATE tasks
SET status = :status,
    result = :result,
    last_error = coalesce(:error, last_error),
    run_at = coalesce(:run_at, run_at),
    attempts = attempts - :uncount,
    lease_owner = NULL,
    lease_expires_at = NULL,
    completed_at = CASE WHEN :status IN ('completed', 'failed', 'canceled') THEN :now END,
    updated_at = :now
WHERE id = :id AND lease_owner = :owner AND attempts = :attempt AND status = 'running'
RETURNING *
