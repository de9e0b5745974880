-- Enqueue tasks as `pending`, one row per element of the arrays ($1 ids, $2 user ids, $3 queues,
-- $4 kinds, $5 payloads (JSON text), $6 priorities, $7 run_at, $8 max_attempts, $9 timeout_ms,
-- $10 idempotency keys, $11 request hashes, $12 each row's now: created_at and updated_at (a
-- group commit writes requests of different times in one statement), $13 concurrency keys).
-- The caller builds the rows from what it inserted.
INSERT INTO tasks (id, user_id, queue, kind, payload, status, priority, run_at, attempts,
                   max_attempts, timeout_ms, idempotency_key, request_hash, created_at, updated_at,
                   concurrency_key)
SELECT r.id, r.user_id, r.queue, r.kind, r.payload::json, 'pending', r.priority, r.run_at, 0,
       r.max_attempts, r.timeout_ms, r.idempotency_key, r.request_hash, r.now, r.now,
       r.concurrency_key
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int8[],
            $8::int8[], $9::int8[], $10::text[], $11::text[], $12::int8[], $13::text[])
     AS r(id, user_id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms,
          idempotency_key, request_hash, now, concurrency_key)
