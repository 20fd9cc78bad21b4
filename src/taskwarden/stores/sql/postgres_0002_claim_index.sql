-- taskwarden PostgreSQL schema, version 2: claiming never scans leased rows.
-- The claim index keeps only unleased scheduled processes; expired leases are found
-- through {processes}_lease.

DROP INDEX IF EXISTS {processes}_claim;

CREATE INDEX {processes}_claim ON {processes} (updated_at, process_id)
    WHERE state = 'scheduled' AND lease_owner IS NULL;
