-- The running attempt $3 of task $1 has read the owner's messages up to $2: the attempt of
-- worker $4 or of task token $5 (its hash), whichever is named. The token is deleted when its
-- attempt ends, so it tells that attempt from the next one, which a wait gives the same number.
UPDATE tasks
SET inbox_read = greatest(inbox_read, $2)
WHERE id = $1 AND status = 'running' AND attempts = $3
  AND ($4::text IS NULL OR lease_owner = $4::text)
  AND ($5::text IS NULL
       OR EXISTS (SELECT 1 FROM task_tokens k WHERE k.token_hash = $5::text AND k.task_id = $1))
