-- A user's usage for the quotas, with the row locked (user_usage_lock.sql): the user's
-- committed usage changes are folded into it, and it is read (migration 0005).
WITH folded AS (
    DELETE FROM user_usage_changes WHERE user_id = $1
    RETURNING unfinished, payload_bytes)
UPDATE user_usage
SET unfinished = unfinished + coalesce((SELECT sum(unfinished) FROM folded), 0),
    payload_bytes = payload_bytes + coalesce((SELECT sum(payload_bytes) FROM folded), 0)
WHERE user_id = $1
RETURNING unfinished, payload_bytes
