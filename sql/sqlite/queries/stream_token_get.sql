SELECT task_id FROM stream_tokens WHERE token_hash = :hash AND expires_at > :now
