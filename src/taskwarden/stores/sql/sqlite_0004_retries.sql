-- taskwarden SQLite schema, version 4: retries on error.
-- How many retries the current launch has had, and when a failed attempt is due again.

ALTER TABLE {processes} ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;

ALTER TABLE {processes} ADD COLUMN next_attempt_at TEXT;
