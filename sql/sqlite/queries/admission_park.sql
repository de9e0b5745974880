-- Set aside the pending tasks :rowids (a JSON array) that a per-key claim's walk passed because
-- their keys were full: out of tasks_claim, into tasks_key_parked (0015_parked.sql). No status
-- changes, so no trigger fires and no event is written.
UPDATE tasks SET parked = 1
WHERE rowid IN (SELECT value FROM json_each(:rowids)) AND status = 'pending'
