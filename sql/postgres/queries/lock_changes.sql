-- The first statement of every transaction that changes a task's state: the change log's
-- writer lock (see migration 0001), taken before any row lock so spool never waits for it while
-- holding one.
SELECT pg_advisory_xact_lock(7306996425318424321)
