-- Revokes one token by its hash.
DELETE FROM tokens WHERE token_hash = :token_hash
