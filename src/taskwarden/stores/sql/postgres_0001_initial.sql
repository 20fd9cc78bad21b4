-- taskwarden PostgreSQL schema, version 1: process records and run history.
-- {processes} and {runs} are replaced by the prefixed table names. process_id sorts
-- bytewise (COLLATE "C") so list order and cursors match the other backends.

CREATE TABLE {processes} (
    process_id       TEXT COLLATE "C" PRIMARY KEY,
    name             TEXT NOT NULL,
    description      TEXT,
    params           JSONB NOT NULL DEFAULT '{}',
    metadata         JSONB NOT NULL DEFAULT '{}',
    parent_id        TEXT,
    root_id          TEXT NOT NULL,
    depth            INTEGER NOT NULL DEFAULT 0,
    sort_order       INTEGER NOT NULL DEFAULT 0,
    cancellable      BOOLEAN NOT NULL DEFAULT TRUE,
    adhoc            BOOLEAN NOT NULL DEFAULT FALSE,
    ephemeral        BOOLEAN NOT NULL DEFAULT FALSE,
    special          BOOLEAN NOT NULL DEFAULT FALSE,
    warning          TEXT,
    schedule         TEXT,
    state            TEXT NOT NULL,
    error            TEXT,
    running_since    TIMESTAMPTZ,
    done_at          TIMESTAMPTZ,
    duration         DOUBLE PRECISION,
    failed_at        TIMESTAMPTZ,
    stopped_at       TIMESTAMPTZ,
    progress_percent DOUBLE PRECISION,
    progress_message TEXT,
    log              JSONB NOT NULL DEFAULT '[]',
    created_at       TIMESTAMPTZ NOT NULL,
    run_number       INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    last_cron_tick   TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL,
    resumable        BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE INDEX {processes}_tree ON {processes} (depth, sort_order, process_id);

CREATE INDEX {processes}_parent ON {processes} (parent_id, sort_order, process_id);

CREATE INDEX {processes}_root ON {processes} (root_id);

CREATE INDEX {processes}_claim ON {processes} (updated_at, process_id) WHERE state = 'scheduled';

CREATE INDEX {processes}_active ON {processes} (state);

CREATE INDEX {processes}_lease ON {processes} (lease_expires_at) WHERE lease_owner IS NOT NULL;

CREATE TABLE {runs} (
    idx            BIGSERIAL PRIMARY KEY,
    operation_id   TEXT NOT NULL,
    name           TEXT NOT NULL,
    kind           TEXT NOT NULL,
    status         TEXT NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL,
    ended_at       TIMESTAMPTZ,
    duration       DOUBLE PRECISION,
    result         TEXT,
    error          TEXT,
    traceback      TEXT,
    cancel_reason  TEXT,
    cancel_message TEXT,
    parent_id      TEXT,
    metadata       JSONB NOT NULL DEFAULT '{}',
    process_id     TEXT,
    run_number     INTEGER
);

CREATE INDEX {runs}_process ON {runs} (process_id, idx);

CREATE INDEX {runs}_name ON {runs} (name, idx);
