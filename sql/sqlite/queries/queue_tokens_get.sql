-- Queue :queue's token bucket as last stored.
SELECT tokens, updated_at FROM queue_tokens WHERE queue = :queue
