SELECT task_id FROM stream_tokens WHERE token_hash = $1 AND expires_at > $2
