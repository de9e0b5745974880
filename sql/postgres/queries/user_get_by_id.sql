SELECT id, name, is_admin FROM users WHERE id = $1
