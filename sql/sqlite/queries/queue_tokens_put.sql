-- Store queue :queue's token bucket.
INSERT INTO queue_tokens (queue, tokens, updated_at) VALUES (:queue, :tokens, :updated_at)
ON CONFLICT (queue) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at
