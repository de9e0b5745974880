-- The oldest kept and the newest change position, and the greatest position of a page of $2
-- after $1 (for the cursor when every change of the page was filtered out).
SELECT (SELECT min(seq) FROM task_changes) AS oldest,
       (SELECT max(seq) FROM task_changes) AS newest,
       (SELECT max(seq) FROM (SELECT seq FROM task_changes WHERE seq > $1
                              ORDER BY seq LIMIT $2) AS p) AS page_end
