-- Whether task token $1 (its hash) still stands for a running attempt of task $2: it is deleted
-- when its attempt ends. Asked under the task's row lock, so the attempt cannot end meanwhile.
SELECT 1 FROM task_tokens WHERE token_hash = $1 AND task_id = $2
