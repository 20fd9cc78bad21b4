-- taskwarden SQLite schema, version 1: process records and run history.
-- {processes} and {runs} are replaced by the prefixed table names.
-- Times are ISO-8601 UTC text with microseconds (fixed width, so text order is time order);
-- JSON values are text; booleans are 0/1.

CREATE TABLE {processes} (
    process_id       TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    description      TEXT,
    params           TEXT NOT NULL DEFAULT '{}',
    metadata         TEXT NOT NULL DEFAULT '{}',
    parent_id        TEXT,
    root_id          TEXT NOT NULL,
    depth            INTEGER NOT NULL DEFAULT 0,
    sort_order       INTEGER NOT NULL DEFAULT 0,
    cancellable      INTEGER NOT NULL DEFAULT 1,
    adhoc            INTEGER NOT NULL DEFAULT 0,
    ephemeral        INTEGER NOT NULL DEFAULT 0,
    special          INTEGER NOT NULL DEFAULT 0,
    warning          TEXT,
    schedule         TEXT,
    state            TEXT NOT NULL,
    error            TEXT,
    running_since    TEXT,
    done_at          TEXT,
    duration         REAL,
    failed_at        TEXT,
    stopped_at       TEXT,
    progress_percent REAL,
    progress_message TEXT,
    log              TEXT NOT NULL DEFAULT '[]',
    created_at       TEXT NOT NULL,
    run_number       INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    last_cron_tick   TEXT,
    updated_at       TEXT NOT NULL,
    resumable        INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX {processes}_tree ON {processes} (depth, sort_order, process_id);

CREATE INDEX {processes}_parent ON {processes} (parent_id, sort_order, process_id);

CREATE INDEX {processes}_root ON {processes} (root_id);

CREATE INDEX {processes}_state ON {processes} (state, updated_at, process_id);

CREATE INDEX {processes}_lease ON {processes} (lease_expires_at) WHERE lease_owner IS NOT NULL;

CREATE TABLE {runs} (
    idx            INTEGER PRIMARY KEY AUTOINCREMENT,
    operation_id   TEXT NOT NULL,
    name           TEXT NOT NULL,
    kind           TEXT NOT NULL,
    status         TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    ended_at       TEXT,
    duration       REAL,
    result         TEXT,
    error          TEXT,
    traceback      TEXT,
    cancel_reason  TEXT,
    cancel_message TEXT,
    parent_id      TEXT,
    metadata       TEXT NOT NULL DEFAULT '{}',
    process_id     TEXT,
    run_number     INTEGER
);

CREATE INDEX {runs}_process ON {runs} (process_id, idx);

CREATE INDEX {runs}_name ON {runs} (name, idx);
