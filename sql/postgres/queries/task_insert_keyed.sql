-- Enqueue one task under an idempotency key: nothing happens when the user's key names a task
-- already (the unique index tasks_idempotency decides, race-free across processes: a concurrent
-- insert of the same key waits for the first to commit, then does nothing). Returns the id when
-- this call inserted it. $1 id, $2 user, $3 queue, $4 kind, $5 payload (JSON text), $6 priority,
-- $7 run_at, $8 max_attempts, $9 timeout_ms, $10 key, $11 request hash, $12 now, $13 concurrency key.
INSERT INTO tasks (id, user_id, queue, kind, payload, status, priority, run_at, attempts,
                   max_attempts, timeout_ms, idempotency_key, request_hash, created_at, updated_at,
                   concurrency_key)
VALUES ($1, $2, $3, $4, $5::text::json, 'pending', $6, $7, 0, $8, $9, $10, $11, $12, $12, $13)
ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
