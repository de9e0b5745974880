-- The next message position of task $1, taken under the task's row lock (held until commit, so
-- the task's messages commit in seq order). $2: how many positions (0 or 1).
UPDATE tasks SET message_seq = message_seq + $2 WHERE id = $1 RETURNING message_seq
