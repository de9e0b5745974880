-- Queue depths by status without a sort: GET /v1/queues, /metrics and spool inspect group
-- by (queue, status) over this index instead of sorting the whole table.
CREATE INDEX tasks_queue_status ON tasks (queue, status, run_at);
