-- The running attempt $3 of task $1 saves checkpoint $2 at $5: the attempt of worker $4 or of
-- task token $6 (its hash), whichever is named (see task_inbox_read.sql, also for why the
-- token must name the row's claim). The owner's messages it has read are behind the task from
-- now on.
UPDATE tasks
SET checkpoint = $2::text::json, inbox_cursor = inbox_read, updated_at = $5
WHERE id = $1 AND status = 'running' AND attempts = $3
  AND ($4::text IS NULL OR lease_owner = $4::text)
  AND ($6::text IS NULL
       OR EXISTS (SELECT 1 FROM task_tokens k
                  WHERE k.token_hash = $6::text AND k.task_id = tasks.id
                    AND k.attempt = tasks.attempts AND k.lease_owner = tasks.lease_owner
                    AND k.started_at = tasks.started_at))
RETURNING *
