-- Makes sure user $1 has a usage row, so the next statement can lock it even before their
-- first task.
INSERT INTO user_usage (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING
