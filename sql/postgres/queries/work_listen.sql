-- The wake-up channel of idle workers (see work_notify.sql), on a connection of its own.
LISTEN spool_work
