-- Per-key admission without a per-key index on every keyed task. tasks_key_pending (0012) held
-- every pending task with a concurrency key, ordered by key, so each claim deleted entries from
-- as many scattered pages as it claimed keys, and each commit wrote and checkpointed those
-- pages: with the index dropped and nothing else changed, the end-to-end run over 1,000 keys
-- went from 0.72x to 1.02x of the unlimited run.
--
-- The key-ordered index is only needed when the claim's walk in claim order (tasks_claim) is
-- clogged by tasks whose keys are full (a flood of one key's tasks ahead of another key's).
-- Such tasks are now set aside once: `parked` = 1 moves a pending task out of tasks_claim into
-- tasks_key_parked, where the per-key claim finds each key's best parked tasks with one seek
-- per key. A claim of its queue takes them from there when their key has room; a claim of a
-- queue without a per-key limit first returns them to tasks_claim (store/sqlite/admission.rs).
-- A task leaves `parked` when it leaves pending (claimed or canceled).
ALTER TABLE tasks ADD COLUMN parked INTEGER;  -- 1 while set aside by a per-key claim, else NULL

DROP INDEX tasks_claim;
CREATE INDEX tasks_claim ON tasks (queue, priority DESC, run_at)
    WHERE status = 'pending' AND parked IS NULL;
DROP INDEX tasks_key_pending;
CREATE INDEX tasks_key_parked ON tasks (queue, concurrency_key, priority DESC, run_at)
    WHERE status = 'pending' AND parked = 1;

-- The pending tasks are the two sets above; each count reads its own index.
DROP VIEW queue_depth;
CREATE VIEW queue_depth AS
WITH clock AS (SELECT CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER) AS now_ms),
     names AS (SELECT queue AS name FROM tasks WHERE status = 'pending' AND parked IS NULL
               UNION SELECT queue FROM tasks WHERE status = 'pending' AND parked = 1
               UNION SELECT queue FROM tasks WHERE status = 'running'
               UNION SELECT queue FROM tasks WHERE status = 'waiting'
               UNION SELECT queue FROM tasks WHERE completed_at IS NOT NULL
               UNION SELECT name FROM queues)
SELECT n.name AS queue,
       coalesce(q.paused, 0) AS paused,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'pending'
            AND t.parked IS NULL AND t.run_at <= clock.now_ms)
     + (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'pending'
            AND t.parked = 1 AND t.run_at <= clock.now_ms) AS pending,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'pending'
            AND t.parked IS NULL AND t.run_at > clock.now_ms)
     + (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'pending'
            AND t.parked = 1 AND t.run_at > clock.now_ms) AS scheduled,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'running') AS running,
       (SELECT count(*) FROM tasks t WHERE t.status = 'completed' AND t.queue = n.name
            AND t.completed_at IS NOT NULL) AS completed,
       (SELECT count(*) FROM tasks t WHERE t.status = 'failed' AND t.queue = n.name
            AND t.completed_at IS NOT NULL) AS failed,
       (SELECT count(*) FROM tasks t WHERE t.status = 'canceled' AND t.queue = n.name
            AND t.completed_at IS NOT NULL) AS canceled,
       (SELECT count(*) FROM tasks t WHERE t.queue = n.name AND t.status = 'waiting') AS waiting
FROM names n CROSS JOIN clock LEFT JOIN queues q ON q.name = n.name
ORDER BY n.name;
