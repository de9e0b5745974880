-- Folds up to $1 committed usage changes into user_usage (migration 0005); returns how many.
SELECT spool_fold_usage($1)
