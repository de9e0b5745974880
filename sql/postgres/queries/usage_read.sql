-- The usage of users $1 (a text[]) as spool_check_usage counts it: each user's row plus the
-- shards of every session. Read without a lock: the group-commit batcher's guess at whose quota
-- stopped a refused group (the writes that follow check it again).
SELECT x AS user_id,
       (coalesce(u.unfinished, 0) + coalesce(s.unfinished, 0))::int8 AS unfinished,
       (coalesce(u.payload_bytes, 0) + coalesce(s.payload_bytes, 0))::int8 AS payload_bytes
FROM unnest($1::text[]) AS x
LEFT JOIN user_usage AS u ON u.user_id = x
LEFT JOIN LATERAL (SELECT sum(unfinished) AS unfinished, sum(payload_bytes) AS payload_bytes
                   FROM user_usage_shards WHERE user_id = x) AS s ON true
