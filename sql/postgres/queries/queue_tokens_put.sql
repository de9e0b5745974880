-- Store queue $1's token bucket: $2 tokens at $3.
INSERT INTO queue_tokens (queue, tokens, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (queue) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at
