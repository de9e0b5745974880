-- Return the parked tasks of queue :queue to tasks_claim: its claim has no per-key limit (the
-- limit was removed from the config, or another process runs without it), so nothing else
-- would take them. One seek when there are none.
UPDATE tasks SET parked = NULL
WHERE rowid IN (SELECT rowid FROM tasks INDEXED BY tasks_key_parked
                WHERE queue = :queue AND status = 'pending' AND parked = 1)
