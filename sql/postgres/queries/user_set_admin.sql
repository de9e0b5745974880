UPDATE users SET is_admin = true WHERE id = $1
