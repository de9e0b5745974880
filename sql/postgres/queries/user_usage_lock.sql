-- Locks user $1's usage row until commit (making it on their first task): the quota check's
-- first statement, so the next (user_usage_get.sql) sees every change committed by a check of
-- this user before it (migration 0005).
INSERT INTO user_usage (user_id) VALUES ($1)
ON CONFLICT (user_id) DO UPDATE SET user_id = excluded.user_id
