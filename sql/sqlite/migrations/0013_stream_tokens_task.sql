-- A task's stream tokens by task: deleting a task (the pruner, ON DELETE CASCADE) and keeping a
-- task's newest tokens only (stream_token_cap.sql) seek instead of scanning every token.
CREATE INDEX stream_tokens_task ON stream_tokens (task_id);
