-- Hands out positions to up to $1 committed changes (migration 0005); returns how many.
SELECT spool_number_changes($1)
