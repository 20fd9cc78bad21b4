-- taskwarden SQLite schema, version 5: the records changed since a time.
-- A change feed without a bus (the service's) reads only what changed, not every record.

CREATE INDEX IF NOT EXISTS {processes}_updated ON {processes} (updated_at);
