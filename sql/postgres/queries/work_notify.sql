-- Wakes the idle workers of every process on the queues $1 (a text[] of queue names): sent on
-- its own, after the commit that made their tasks pending, never inside it (see notify_work in
-- src/store/postgres/mod.rs: a notifying commit holds a cluster-wide lock until it is flushed).
SELECT pg_notify('spool_work', q) FROM unnest($1::text[]) AS q
