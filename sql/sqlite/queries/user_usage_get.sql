-- A user's usage for the quotas: unfinished tasks and payload bytes (no row: nothing yet).
SELECT unfinished, payload_bytes FROM user_usage WHERE user_id = :user_id
