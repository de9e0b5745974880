-- The admission lock of queue $1, held to the end of the claim's transaction: claims of one
-- limited queue take turns, so each counts the running tasks and the bucket as the previous
-- claim committed them (READ COMMITTED: every later statement sees that commit) and two
-- processes can never over-admit.
SELECT pg_advisory_xact_lock(hashtextextended('spool-admission:' || $1, 0))
