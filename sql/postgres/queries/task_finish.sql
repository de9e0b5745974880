-- End an attempt, fenced by owner and attempt number: a worker that lost its lease matches no
-- row and changes nothing. $4 is the status decided; a task whose cancel was asked for never
-- goes back to pending, it ends canceled (crate::queue::finish_status, applied against the
-- cancel request as it is at this write). $5 result (JSON text), $6 error, $7 run_at (a retry)
-- may be NULL; $8 is 1 when the attempt is given back (shutdown) rather than spent; $9 now.
-- $1 id, $2 owner, $3 attempt. A 'waiting' outcome parks the task until $10 (run_at is that
-- too) and takes the owner's messages this attempt read as behind the task; the wake reason of
-- the wait before is spent, unless the attempt is given back unrun (shutdown).
UPDATE tasks
SET status = CASE WHEN cancel_requested AND $4::text IN ('pending', 'waiting') THEN 'canceled'
                  ELSE $4::text END,
    result = $5::text::json,
    last_error = coalesce($6::text, last_error),
    run_at = coalesce($7::int8, run_at),
    attempts = attempts - $8::int8,
    lease_owner = NULL,
    lease_expires_at = NULL,
    completed_at = CASE WHEN $4::text NOT IN ('pending', 'waiting') OR cancel_requested
                        THEN $9::int8 END,
    wait_until = CASE WHEN $4::text = 'waiting' AND NOT cancel_requested THEN $10::int8 END,
    wake_reason = CASE WHEN $8::int8 = 1 AND $4::text = 'pending' THEN wake_reason END,
    inbox_cursor = CASE WHEN $4::text = 'waiting' THEN inbox_read ELSE inbox_cursor END,
    updated_at = $9::int8
WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND status = 'running'
RETURNING status, attempts, last_error, run_at, completed_at, cancel_requested, wait_until,
          wake_reason, inbox_cursor, checkpoint
