-- The database's clock, in microseconds since the Unix epoch: the time every process on the
-- database keeps its times in (see SyncedClock). clock_timestamp(), not now(): the time of
-- this statement, not of its transaction's start.
SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8
