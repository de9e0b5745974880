-- spool_usage_add keeps its plan (issue 13).
--
-- It was a LANGUAGE sql function. PostgreSQL 15 keeps the plan of such a function only for one
-- run of the statement that calls it, and every usage trigger calls it from a statement of its
-- own: so each call parsed and planned the upsert again. The insert trigger calls it once per
-- enqueue transaction; the status trigger calls it once per task that starts or stops being
-- unfinished, so once per finished task. That parsing and planning was about a tenth of the
-- server's CPU under 64 enqueueing clients. In PL/pgSQL, the statement is planned once per
-- session. What it does is unchanged.

CREATE OR REPLACE FUNCTION spool_usage_add(who text, tasks bigint, bytes bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_usage_shards AS s (user_id, backend, unfinished, payload_bytes)
    VALUES (who, pg_backend_pid(), tasks, bytes)
    ON CONFLICT (user_id, backend) DO UPDATE
        SET unfinished = s.unfinished + excluded.unfinished,
            payload_bytes = s.payload_bytes + excluded.payload_bytes;
END
$$;
