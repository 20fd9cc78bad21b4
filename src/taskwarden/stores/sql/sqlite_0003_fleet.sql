-- taskwarden SQLite schema, version 3: the worker fleet.
-- What happens to a run whose worker is lost, and one record per running worker.

ALTER TABLE {processes} ADD COLUMN on_worker_lost TEXT NOT NULL DEFAULT 'fail';

ALTER TABLE {processes} ADD COLUMN lost_retries INTEGER NOT NULL DEFAULT 1;

ALTER TABLE {processes} ADD COLUMN lost_count INTEGER NOT NULL DEFAULT 0;

CREATE TABLE {workers} (
    incarnation  TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    renewed_at   TEXT NOT NULL,
    runs         INTEGER NOT NULL DEFAULT 0,
    concurrency  INTEGER,
    process_ids  TEXT NOT NULL DEFAULT '[]'
);

CREATE INDEX {workers}_renewed ON {workers} (renewed_at);
