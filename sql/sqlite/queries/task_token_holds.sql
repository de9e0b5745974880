-- Whether task token :token_hash still stands for a running attempt of task :task_id: it is
-- deleted when its attempt ends.
SELECT 1 FROM task_tokens WHERE token_hash = :token_hash AND task_id = :task_id
