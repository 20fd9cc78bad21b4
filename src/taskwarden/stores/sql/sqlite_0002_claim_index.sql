-- taskwarden SQLite schema, version 2: claiming never scans leased rows.
-- Unleased scheduled processes get their own partial index; expired leases are found
-- through {processes}_lease.

CREATE INDEX IF NOT EXISTS {processes}_claim ON {processes} (updated_at, process_id)
    WHERE state = 'scheduled' AND lease_owner IS NULL;
