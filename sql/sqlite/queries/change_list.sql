-- Up to :limit changes after :after (counted before the filters, so a page is bounded however
-- few of them are the caller's), with the task as it is now. A change of a task pruned since
-- has no task and is left out.
SELECT c.seq AS change_seq, c.status AS change_status, t.*
FROM (SELECT seq, task_id, status FROM task_changes WHERE seq > :after ORDER BY seq LIMIT :limit) AS c
JOIN tasks AS t ON t.id = c.task_id
WHERE (:user_id IS NULL OR t.user_id = :user_id)
  AND (:queue IS NULL OR t.queue = :queue)
ORDER BY c.seq
