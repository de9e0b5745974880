-- Expired read tokens at $1 (a few at a time: each new token clears some).
DELETE FROM stream_tokens
WHERE token_hash IN (SELECT token_hash FROM stream_tokens WHERE expires_at <= $1 LIMIT 100)
