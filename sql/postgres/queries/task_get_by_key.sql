-- The task a user created earlier under an idempotency key, if it is still kept.
SELECT * FROM tasks WHERE user_id = $1 AND idempotency_key = $2
