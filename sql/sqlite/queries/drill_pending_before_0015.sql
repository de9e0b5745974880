-- drill_pending.sql for a file at a schema before 0015_parked.sql (no tasks.parked: every
-- pending task is in tasks_claim), as an older spool wrote it.
SELECT count(*), coalesce(max(updated_at), 0) FROM tasks WHERE status = 'pending'
