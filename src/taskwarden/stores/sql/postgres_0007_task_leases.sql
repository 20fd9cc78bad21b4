-- taskwarden PostgreSQL schema, version 7: per-task lease durations.
-- The lease a task's runs carry when its definition overrides the worker's (NULL: the
-- worker's own); claims and renewals read it per row, so renewal stays one statement.

ALTER TABLE {processes} ADD COLUMN lease_seconds DOUBLE PRECISION;
