-- End an attempt, fenced by owner and attempt number: a worker that lost its lease matches no
-- row and changes nothing. :status is the new status; :run_at (retry) and :error may be NULL;
-- :uncount is 1 when the attempt is given back (shutdown) rather than spent. A task whose cancel
-- was asked for never goes back to pending: it ends canceled. Only the columns this statement
-- may decide come back; the caller holds the rest of the row from its claim. OR FAIL: one row,
-- so there is nothing for a statement journal to undo.
-- A 'waiting' outcome parks the task until :wait_until (run_at is that too) and takes the owner's
-- messages this attempt read as behind the task; the wake reason of the wait before is spent,
-- unless the attempt is given back unrun (shutdown). :unread is 1 when a waiting outcome finds
-- the owner wrote since the claim, past what the attempt read (task_inbox_unread.sql): the task does not park but
-- is pending again at once, woken by that message, as if it had come just after the wait.
UPDATE OR FAIL tasks
SET status = CASE WHEN cancel_requested = 1 AND (:status = 'pending' OR :status = 'waiting')
                  THEN 'canceled'
                  WHEN :unread = 1 THEN 'pending'
                  ELSE :status END,
    result = :result,
    last_error = coalesce(:error, last_error),
    run_at = CASE WHEN :unread = 1 AND cancel_requested = 0 THEN :now
                  ELSE coalesce(:run_at, run_at) END,
    attempts = attempts - :uncount,
    lease_owner = NULL,
    lease_expires_at = NULL,
    completed_at = CASE WHEN (:status <> 'pending' AND :status <> 'waiting') OR cancel_requested = 1
                        THEN :now END,
    wait_until = CASE WHEN :status = 'waiting' AND cancel_requested = 0 AND :unread = 0
                      THEN :wait_until END,
    wake_reason = CASE WHEN :uncount = 1 AND :status = 'pending' THEN wake_reason
                       WHEN :unread = 1 AND cancel_requested = 0 THEN 'message' END,
    inbox_cursor = CASE WHEN :status = 'waiting' THEN inbox_read ELSE inbox_cursor END,
    updated_at = :now
WHERE id = :id AND lease_owner = :owner AND attempts = :attempt AND status = 'running'
RETURNING status, attempts, last_error, run_at, completed_at, cancel_requested, wait_until,
          wake_reason, inbox_cursor, checkpoint
