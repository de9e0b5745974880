-- The task a user created earlier under an idempotency key, if it is still kept.
SELECT * FROM tasks WHERE user_id = :user_id AND idempotency_key = :idempotency_key
