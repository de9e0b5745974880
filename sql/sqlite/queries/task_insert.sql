-- Enqueue one task as `pending`. The caller builds the row from what it inserted.
INSERT INTO tasks (id, user_id, queue, kind, payload, status, priority, run_at, attempts,
                   max_attempts, timeout_ms, idempotency_key, request_hash, created_at, updated_at,
                   concurrency_key)
VALUES (:id, :user_id, :queue, :kind, :payload, 'pending', :priority, :run_at, 0,
        :max_attempts, :timeout_ms, :idempotency_key, :request_hash, :now, :now,
        :concurrency_key)
