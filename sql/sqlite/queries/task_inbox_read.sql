-- The running attempt has read the owner's messages up to :upto: the attempt of worker :owner
-- or of task token :token (its hash), whichever is named. The token is deleted when its attempt
-- ends, so it tells that attempt from the next one, which a wait gives the same number.
UPDATE tasks
SET inbox_read = max(inbox_read, :upto)
WHERE id = :id AND status = 'running' AND attempts = :attempt
  AND (:owner IS NULL OR lease_owner = :owner)
  AND (:token IS NULL
       OR EXISTS (SELECT 1 FROM task_tokens k
                  WHERE k.token_hash = :token AND k.task_id = tasks.id
                    AND k.attempt = tasks.attempts AND k.lease_owner = tasks.lease_owner
                    AND k.started_at = tasks.started_at))
