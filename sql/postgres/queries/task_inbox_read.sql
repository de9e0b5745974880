-- The running attempt $3 of task $1 has read the owner's messages up to $2: the attempt of
-- worker $4 or of task token $5 (its hash), whichever is named. The token is deleted when its
-- attempt ends, so it tells that attempt from the next one, which a wait gives the same number.
-- The token must also name the claim of the row being updated: an UPDATE that waited for the
-- row's lock checks the row's newest version, but reads task_tokens as it was when it began.
UPDATE tasks
SET inbox_read = greatest(inbox_read, $2)
WHERE id = $1 AND status = 'running' AND attempts = $3
  AND ($4::text IS NULL OR lease_owner = $4::text)
  AND ($5::text IS NULL
       OR EXISTS (SELECT 1 FROM task_tokens k
                  WHERE k.token_hash = $5::text AND k.task_id = tasks.id
                    AND k.attempt = tasks.attempts AND k.lease_owner = tasks.lease_owner
                    AND k.started_at = tasks.started_at))
