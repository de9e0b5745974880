-- `spool migrate-to-postgres`: every table of the schema spool uses, but for the two that hold
-- rows from the start (the schema versions and the /readyz row). The copy goes only into a
-- database where none of these has a row.
SELECT c.relname::text AS name
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema()
  AND c.relkind IN ('r', 'p')
  AND c.relname NOT IN ('spool_schema_versions', 'health')
ORDER BY c.relname
