-- A task, locked until the transaction ends (cancel, retry and messages decide on it).
SELECT * FROM tasks WHERE id = $1 FOR UPDATE
