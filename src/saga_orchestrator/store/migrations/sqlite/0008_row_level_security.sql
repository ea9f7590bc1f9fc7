-- Row-level security is PostgreSQL's (see migrations/postgres/0008_row_level_security.sql).
-- The embedded SQLite store serves one process, which filters every query by tenant itself;
-- there are no database roles to separate. This version keeps both backends' schema
-- versions in step.
SELECT 1;
