-- The quota check of an enqueue after its insert: users $1, limits $2 (unfinished tasks) and
-- $3 (payload bytes); raises SPQ01 or SPQ02 over a limit (migration 0005).
SELECT spool_check_usage($1, $2, $3)
