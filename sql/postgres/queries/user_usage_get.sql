-- A user's usage for the quotas, locked until commit: concurrent enqueues of one user, on any
-- host, check it one after the other.
SELECT unfinished, payload_bytes FROM user_usage WHERE user_id = $1 FOR UPDATE
