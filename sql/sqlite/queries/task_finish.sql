-- End an attempt, fenced by owner and attempt number: a worker that lost its lease matches no
-- row and changes nothing. :status is the new status; :run_at (retry) and :error may be NULL;
-- :uncount is 1 when the attempt is given back (shutdown) rather than spent. A task whose cancel
-- was asked for never goes back to pending: it ends canceled. Only the columns this statement
-- may decide come back; the caller holds the rest of the row from its claim. OR FAIL: one row,
-- so there is nothing for a statement journal to undo.
UPDATE OR FAIL tasks
SET status = CASE WHEN cancel_requested = 1 AND :status = 'pending' THEN 'canceled' ELSE :status END,
    result = :result,
    last_error = coalesce(:error, last_error),
    run_at = coalesce(:run_at, run_at),
    attempts = attempts - :uncount,
    lease_owner = NULL,
    lease_expires_at = NULL,
    completed_at = CASE WHEN :status <> 'pending' OR cancel_requested = 1 THEN :now END,
    updated_at = :now
WHERE id = :id AND lease_owner = :owner AND attempts = :attempt AND status = 'running'
RETURNING status, attempts, last_error, run_at, completed_at, cancel_requested
