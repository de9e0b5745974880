DELETE FROM tokens WHERE token_hash = $1
