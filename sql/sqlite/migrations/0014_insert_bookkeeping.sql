-- An enqueue's bookkeeping once per statement, not once per row. The two insert triggers ran a
-- trigger program for every new task (its change-log row, its owner's usage), a fifth to a
-- quarter of a batch enqueue's time. Every task row spool inserts is written by one function
-- (store/sqlite/insert.rs, write_rows), which now writes the change-log rows of each statement's
-- tasks in one statement (in the same order, so positions follow insertion as before) and adds
-- each owner's new tasks and payload bytes to user_usage once per group of rows it writes, in
-- the same transaction.
-- Status changes and deletes keep their triggers.
DROP TRIGGER tasks_usage_insert;
DROP TRIGGER task_changes_insert;
