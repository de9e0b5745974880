-- The oldest kept and the newest change position, and the greatest position of a page of
-- :limit after :after (for the cursor when every change of the page was filtered out).
SELECT (SELECT min(seq) FROM task_changes) AS oldest,
       (SELECT max(seq) FROM task_changes) AS newest,
       (SELECT max(seq) FROM (SELECT seq FROM task_changes WHERE seq > :after
                              ORDER BY seq LIMIT :limit)) AS page_end
