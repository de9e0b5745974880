-- End several attempts in one statement (a group commit of outcomes), each fenced by owner and
-- attempt number as on SQLite: a worker that lost its lease matches no row and changes nothing.
-- One row of the arrays per attempt, no task twice: $1 id, $2 owner, $3 attempt, $4 the status
-- decided, $5 result (JSON text), $6 error, $7 run_at (a retry), $8 1 when the attempt is given
-- back (shutdown) rather than spent, $9 now, $10 wait_until (a wait). NULL where not given.
-- Each row does what one attempt's end does alone: a task whose cancel was asked for never goes
-- back to pending or to waiting, it ends canceled (crate::queue::finish_status, applied against
-- the cancel request as it is at this write). A 'waiting' outcome parks the task until its
-- wait_until (run_at is that too) and takes the owner's messages this attempt read as behind
-- the task; the wake reason of the wait before is spent, unless the attempt is given back unrun
-- (shutdown). A wait while the owner has written since the attempt began and past what it read
-- (inbox_last > inbox_claimed and > inbox_read: a message sent after its last look at the
-- inbox) does not park: the task is pending again at once, woken by that message, as if it had
-- come just after the wait (a cancel asked for still ends it canceled).
-- Returns the rows it ended, as they are now: the caller wakes the queues of tasks
-- pending again (a retry, an attempt given back) after the commit (work_notify.sql).
-- The rows the UPDATE will change (the same fence) are locked first, in id order, as the
-- heartbeat (lease_extend.sql) locks them. The UPDATE alone locked them in the order its plan
-- read them (for a busy queue, the order they lie in the table), so a group ending tasks b and
-- a while the same worker's heartbeat held a and waited for b deadlocked, and PostgreSQL broke
-- it after deadlock_timeout (a second) by failing one of the two. Rows that are not this
-- worker's any more are not locked, as the UPDATE alone never locked them. FOR NO KEY UPDATE
-- is the lock the UPDATE takes anyway.
-- The fence says IS NOT DISTINCT FROM (the same as = here: an owner is never NULL) so that no
-- index but the primary key can serve it: with =, the planner, whose statistics often say that
-- no task runs (they were taken while none did), chose the partial index of running tasks and
-- read every running task for each outcome, which made the statement two to three times as
-- slow in a quarter of the bench runs (end to end about 10,000 tasks/s instead of 15,000).
WITH locked AS MATERIALIZED (
    SELECT t.id
    FROM tasks AS t
    JOIN unnest($1::uuid[], $2::text[], $3::int8[]) AS x(id, owner, attempt) ON t.id = x.id
    WHERE t.lease_owner IS NOT DISTINCT FROM x.owner AND t.attempts = x.attempt
      AND t.status IS NOT DISTINCT FROM 'running'
    ORDER BY t.id
    FOR NO KEY UPDATE OF t
),
done AS (
    UPDATE tasks AS t
    SET status = CASE WHEN t.cancel_requested AND x.status IN ('pending', 'waiting')
                      THEN 'canceled'
                      WHEN x.status = 'waiting'
                           AND t.inbox_last > greatest(t.inbox_read, t.inbox_claimed)
                      THEN 'pending'
                      ELSE x.status END,
        result = x.result::json,
        last_error = coalesce(x.error, t.last_error),
        run_at = CASE WHEN x.status = 'waiting' AND NOT t.cancel_requested
                           AND t.inbox_last > greatest(t.inbox_read, t.inbox_claimed)
                      THEN x.now
                      ELSE coalesce(x.run_at, t.run_at) END,
        attempts = t.attempts - x.uncount,
        lease_owner = NULL,
        lease_expires_at = NULL,
        completed_at = CASE WHEN x.status NOT IN ('pending', 'waiting') OR t.cancel_requested
                            THEN x.now END,
        wait_until = CASE WHEN x.status = 'waiting' AND NOT t.cancel_requested
                               AND t.inbox_last <= greatest(t.inbox_read, t.inbox_claimed)
                          THEN x.wait_until END,
        wake_reason = CASE WHEN x.uncount = 1 AND x.status = 'pending' THEN t.wake_reason
                           WHEN x.status = 'waiting' AND NOT t.cancel_requested
                                AND t.inbox_last > greatest(t.inbox_read, t.inbox_claimed)
                           THEN 'message' END,
        inbox_cursor = CASE WHEN x.status = 'waiting' THEN t.inbox_read ELSE t.inbox_cursor END,
        updated_at = x.now
    FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[],
                $7::int8[], $8::int8[], $9::int8[], $10::int8[])
         AS x(id, owner, attempt, status, result, error, run_at, uncount, now, wait_until)
         JOIN locked AS l ON l.id = x.id
    WHERE t.id = x.id AND t.lease_owner IS NOT DISTINCT FROM x.owner AND t.attempts = x.attempt
      AND t.status IS NOT DISTINCT FROM 'running'
    RETURNING t.id, t.queue, t.status, t.attempts, t.last_error, t.run_at, t.completed_at,
              t.cancel_requested, t.wait_until, t.wake_reason, t.inbox_cursor, t.checkpoint
)
SELECT * FROM done
