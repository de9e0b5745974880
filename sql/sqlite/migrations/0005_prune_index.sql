-- The retention pruner looks up finished tasks by (status, completed_at); the partial index of
-- 0001 cannot serve `status = ?`, so without this every prune pass scanned the table.
CREATE INDEX tasks_prune ON tasks (status, completed_at);
