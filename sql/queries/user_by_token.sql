SELECT name, is_admin FROM users WHERE token_hash = :token_hash
