-- The next message position of task $1, taken under the task's row lock (held until commit, so
-- the task's messages commit in seq order). $2: how many positions (0 or 1). $3: the message is
-- the owner's, so it is also the newest of the task's inbox (inbox_last).
UPDATE tasks
SET message_seq = message_seq + $2,
    inbox_last = CASE WHEN $3::bool THEN message_seq + $2 ELSE inbox_last END
WHERE id = $1
RETURNING message_seq
