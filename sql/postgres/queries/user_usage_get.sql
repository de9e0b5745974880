-- A user's usage for the quotas: their row, locked before this statement
-- (user_usage_lock.sql), plus their shards (migration 0005).
SELECT (u.unfinished + coalesce(s.unfinished, 0))::int8 AS unfinished,
       (u.payload_bytes + coalesce(s.payload_bytes, 0))::int8 AS payload_bytes
FROM user_usage AS u
CROSS JOIN (SELECT sum(unfinished) AS unfinished, sum(payload_bytes) AS payload_bytes
            FROM user_usage_shards WHERE user_id = $1) AS s
WHERE u.user_id = $1
