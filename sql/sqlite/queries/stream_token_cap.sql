-- A task keeps its :keep newest stream tokens (one per open browser tab, say); minting more
-- forgets the oldest, so no client can grow the table without bound.
DELETE FROM stream_tokens
WHERE task_id = :task_id
  AND token_hash NOT IN (SELECT token_hash FROM stream_tokens WHERE task_id = :task_id
                         ORDER BY expires_at DESC, token_hash LIMIT (SELECT :keep))
