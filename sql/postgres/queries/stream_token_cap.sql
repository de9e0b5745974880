-- $1 task, $2 how many to keep. A task keeps its $2 newest stream tokens (one per open browser
-- tab, say); minting more forgets the oldest, so no client can grow the table without bound.
DELETE FROM stream_tokens
WHERE task_id = $1
  AND token_hash NOT IN (SELECT token_hash FROM stream_tokens WHERE task_id = $1
                         ORDER BY expires_at DESC, token_hash COLLATE "C" LIMIT $2)
