-- taskwarden PostgreSQL schema, version 8: the process ids a claim may take, stored once.
-- A worker claims only what it has definitions for. Sent with every claim, that list
-- (10,000 ids: 120 KB) was parsed and hashed by the server at each claim; stored here
-- under a digest of its content, a claim probes it by primary key. A scope is the same
-- list whoever loads it, so workers with the same definitions share one; scopes unused for
-- a week are deleted when a scope is loaded (a worker loads its own again each day).

CREATE TABLE {prefix}_scopes (
    scope      TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    loaded_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE {prefix}_scope_ids (
    scope       TEXT COLLATE "C" NOT NULL REFERENCES {prefix}_scopes (scope) ON DELETE CASCADE,
    process_id  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (scope, process_id)
);
