-- Makes a user an admin (the reserved name `admin` at bootstrap).
UPDATE users SET is_admin = 1 WHERE id = :id
