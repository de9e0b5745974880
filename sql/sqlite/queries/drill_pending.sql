-- drill_pending: the pending tasks for the restore drill, how many and the newest change among
-- them (0 when none), read from the two indexes that hold them (0015_parked.sql): tasks_claim
-- and tasks_key_parked (cost: the backlog, not the history). The rest of the counts and the
-- newest change are drill_counts.sql and drill_newest_change.sql, which work at any schema.
SELECT (SELECT count(*) FROM tasks WHERE status = 'pending' AND parked IS NULL)
     + (SELECT count(*) FROM tasks WHERE status = 'pending' AND parked = 1),
       max(coalesce((SELECT max(updated_at) FROM tasks
                     WHERE status = 'pending' AND parked IS NULL), 0),
           coalesce((SELECT max(updated_at) FROM tasks WHERE status = 'pending' AND parked = 1), 0))
