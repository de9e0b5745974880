-- Wakes the idle workers of every process on queue $1 (a text[] of queue names) when the
-- transaction commits; one notification per queue per commit (PostgreSQL folds duplicates).
SELECT pg_notify('spool_work', q) FROM unnest($1::text[]) AS q
