-- A limited queue's claims take turns, across every process: held to the claim's commit, so
-- the next claim of queue $1 counts what this one started. Taken in queue-name order.
SELECT pg_advisory_xact_lock(hashtextextended('spool-admission:' || $1, 0))
