-- Every stored token bucket (for GET /v1/queues).
SELECT queue, tokens, updated_at FROM queue_tokens
