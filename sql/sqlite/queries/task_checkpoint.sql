-- The running attempt saves its checkpoint, fenced by attempt and by the worker :owner (a
-- worker's own write) or the task token :token (see task_inbox_read.sql); the owner's messages
-- it has read are behind the task from now on.
UPDATE tasks
SET checkpoint = :checkpoint, inbox_cursor = inbox_read, updated_at = :now
WHERE id = :id AND status = 'running' AND attempts = :attempt
  AND (:owner IS NULL OR lease_owner = :owner)
  AND (:token IS NULL
       OR EXISTS (SELECT 1 FROM task_tokens k
                  WHERE k.token_hash = :token AND k.task_id = tasks.id
                    AND k.attempt = tasks.attempts AND k.lease_owner = tasks.lease_owner
                    AND k.started_at = tasks.started_at))
RETURNING *
