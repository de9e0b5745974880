-- The common end of an attempt: as task_finish.sql, for a task with no cancel asked for, and
-- without RETURNING (which buffers its rows in a temporary table). With no cancel the outcome
-- is exactly what the caller asked for, so it knows the row; when this matches no row (a
-- cancel was asked for, or the lease is gone) the caller runs task_finish.sql to find out.
UPDATE OR FAIL tasks
SET status = :status,
    result = :result,
    last_error = coalesce(:error, last_error),
    run_at = coalesce(:run_at, run_at),
    attempts = attempts - :uncount,
    lease_owner = NULL,
    lease_expires_at = NULL,
    completed_at = CASE WHEN :status <> 'pending' THEN :now END,
    updated_at = :now
WHERE id = :id AND lease_owner = :owner AND attempts = :attempt AND status = 'running'
  AND cancel_requested = 0
