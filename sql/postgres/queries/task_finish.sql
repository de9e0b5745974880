-- End an attempt, fenced by owner and attempt number: a worker that lost its lease matches no
-- row and changes nothing. $4 is the status decided; a task whose cancel was asked for never
-- goes back to pending, it ends canceled (crate::queue::finish_status, applied against the
-- cancel request as it is at this write). $5 result (JSON text), $6 error, $7 run_at (a retry)
-- may be NULL; $8 is 1 when the attempt is given back (shutdown) rather than spent; $9 now.
-- $1 id, $2 owner, $3 attempt.
UPDATE tasks
SET status = CASE WHEN cancel_requested AND $4::text = 'pending' THEN 'canceled' ELSE $4::text END,
    result = $5::text::json,
    last_error = coalesce($6::text, last_error),
    run_at = coalesce($7::int8, run_at),
    attempts = attempts - $8::int8,
    lease_owner = NULL,
    lease_expires_at = NULL,
    completed_at = CASE WHEN $4::text <> 'pending' OR cancel_requested THEN $9::int8 END,
    updated_at = $9::int8
WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND status = 'running'
RETURNING status, attempts, last_error, run_at, completed_at, cancel_requested
