-- Moves the usage shards of ended sessions into user_usage (migration 0005); returns how many.
SELECT spool_fold_usage()
