#!/usr/bin/env python3
"""The floor for a SQLite drain: a bare ``sqlite3`` loop making a fleet worker's writes.

    python bench/sqlite_baseline.py [--n 10000] [--batch 100]

Per job, the same writes a taskwarden worker makes, with the same settings (WAL,
``synchronous=NORMAL``): a batched claim (one ``UPDATE … RETURNING`` under
``BEGIN IMMEDIATE`` for up to ``--batch`` jobs), the start (``scheduled -> running``, a
compare-and-set), and the end (``running -> done``) with its run record in one
transaction. Nothing else: no event loop, no threads, no records decoded. Prints one JSON
line with ``drain_per_s`` (jobs / seconds from the first claim to the last end).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time


def drain(n: int, batch: int) -> float:
    folder = tempfile.mkdtemp(prefix="twbaseline-")
    conn = sqlite3.connect(os.path.join(folder, "baseline.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, owner TEXT, "
        "run_number INTEGER NOT NULL DEFAULT 0, started REAL, ended REAL, updated REAL)"
    )
    conn.execute("CREATE INDEX jobs_claim ON jobs (state, owner, updated)")
    conn.execute(
        "CREATE TABLE runs (idx INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, status TEXT, "
        "started REAL, ended REAL, run_number INTEGER)"
    )
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO jobs (id, state, updated) VALUES (?, 'scheduled', ?)",
        ((f"noop-{i}", float(i)) for i in range(n)),
    )
    conn.execute("COMMIT")
    started = time.perf_counter()
    done = 0
    while done < n:
        conn.execute("BEGIN IMMEDIATE")
        claimed = conn.execute(
            "UPDATE jobs SET owner = 'w', updated = ? WHERE id IN (SELECT id FROM jobs "
            "WHERE state = 'scheduled' AND owner IS NULL ORDER BY updated LIMIT ?) "
            "RETURNING id",
            (time.time(), batch),
        ).fetchall()
        conn.execute("COMMIT")
        for (job,) in claimed:
            now = time.time()
            conn.execute(
                "UPDATE jobs SET state = 'running', started = ?, run_number = run_number + 1, "
                "updated = ? WHERE id = ? AND state = 'scheduled' AND owner = 'w'",
                (now, now, job),
            )
            conn.execute("BEGIN IMMEDIATE")
            (run_number,) = conn.execute(
                "UPDATE jobs SET state = 'done', ended = ?, owner = NULL, updated = ? "
                "WHERE id = ? AND state = 'running' AND owner = 'w' RETURNING run_number",
                (now, now, job),
            ).fetchone()
            conn.execute(
                "INSERT INTO runs (id, status, started, ended, run_number) "
                "VALUES (?, 'completed', ?, ?, ?)",
                (job, now, now, run_number),
            )
            conn.execute("COMMIT")
            done += 1
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()
    print(json.dumps({"case": "sqlite-baseline", "drain_per_s": drain(args.n, args.batch)}))


if __name__ == "__main__":
    main()
