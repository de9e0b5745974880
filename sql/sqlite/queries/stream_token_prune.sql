-- Expired read tokens (a few at a time: each new token clears some).
DELETE FROM stream_tokens
WHERE token_hash IN (SELECT token_hash FROM stream_tokens WHERE expires_at <= :now LIMIT 100)
