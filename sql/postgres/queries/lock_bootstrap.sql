-- Serializes the first start's admin token across processes.
SELECT pg_advisory_xact_lock(7306996425318424322)
