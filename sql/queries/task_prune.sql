-- Delete up to :limit tasks that ended with :status before :before (messages go with them).
DELETE FROM tasks
WHERE id IN (SELECT id FROM tasks
             WHERE status = :status AND completed_at < :before
             LIMIT :limit)
