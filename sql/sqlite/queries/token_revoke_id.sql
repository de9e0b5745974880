-- Revokes one token by the id `spool token list` shows.
DELETE FROM tokens WHERE id = :id
