-- Adds :tasks new pending tasks and :bytes of payload to user :user_id's usage (the quotas of
-- [limits]): what the insert trigger did row by row until 0014, once per user and group of
-- rows written.
INSERT INTO user_usage (user_id, unfinished, payload_bytes) VALUES (:user_id, :tasks, :bytes)
ON CONFLICT (user_id) DO UPDATE
    SET unfinished = unfinished + excluded.unfinished,
        payload_bytes = payload_bytes + excluded.payload_bytes
