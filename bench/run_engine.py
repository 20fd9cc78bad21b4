#!/usr/bin/env python3
"""Run the engine benchmarks and their peers round-robin; print medians and the targets.

    python bench/run_engine.py [--repeats 5] [--n 10000] [--concurrency 100]
                               [--only REGEX] [--out raw.jsonl]

Every repeat runs every case once, each in a fresh process, in the same order, so machine
noise spreads over all of them alike. The table shows the median over the repeats (min and
max beside it), and the issue's targets are computed from those medians, so each ratio
compares numbers measured in this same run. Needs only the standard library itself;
taskwarden's cases run under ``--python`` (default ``.venv/bin/python``), the peers under
``--peers-python`` (default ``bench/.venv-peers/bin/python``).

Servers: ``BENCH_PG_URL`` and ``BENCH_REDIS_URL`` when set; otherwise a throwaway PostgreSQL
and Redis are started for the run (``tests/servers.py``, the test suite's own: PostgreSQL
with ``fsync=off``) and stopped afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True, slots=True)
class Case:
    """One benchmark process to run each repeat."""

    key: str
    label: str
    peers: bool
    args: tuple[str, ...]


def cases(a: argparse.Namespace) -> list[Case]:
    n, c = str(a.n), str(a.concurrency)
    drain = ("--n", n, "--concurrency", c)
    return [
        Case("tw-sqlite-drain", "taskwarden SQLite", False, ("drain", "--store", "sqlite", *drain)),
        Case(
            "tw-pg-drain", "taskwarden PostgreSQL", False, ("drain", "--store", "postgres", *drain)
        ),
        Case(
            "procrastinate-drain",
            "procrastinate (PostgreSQL)",
            True,
            ("bench", "--peer", "procrastinate", "--case", "drain", *drain),
        ),
        Case(
            "saq-drain", "saq (Redis)", True, ("bench", "--peer", "saq", "--case", "drain", *drain)
        ),
        Case("tw-sqlite-trickle", "taskwarden SQLite", False, ("trickle", "--store", "sqlite")),
        Case("tw-pg-trickle", "taskwarden PostgreSQL", False, ("trickle", "--store", "postgres")),
        Case(
            "procrastinate-trickle",
            "procrastinate (PostgreSQL)",
            True,
            ("bench", "--peer", "procrastinate", "--case", "trickle", "--concurrency", c),
        ),
        Case(
            "saq-trickle",
            "saq (Redis)",
            True,
            ("bench", "--peer", "saq", "--case", "trickle", "--concurrency", c),
        ),
        Case("tw-sqlite-progress", "taskwarden SQLite", False, ("progress", "--store", "sqlite")),
        Case("tw-pg-progress", "taskwarden PostgreSQL", False, ("progress", "--store", "postgres")),
    ]


@contextlib.contextmanager
def servers() -> Iterator[dict[str, str]]:
    """BENCH_PG_URL / BENCH_REDIS_URL from the environment, else throwaway servers."""
    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for var, starter in (
            ("BENCH_PG_URL", "throwaway_postgres"),
            ("BENCH_REDIS_URL", "throwaway_redis"),
        ):
            if os.environ.get(var):
                env[var] = os.environ[var]
                continue
            sys.path.insert(0, str(ROOT))
            from tests import servers as test_servers

            url = stack.enter_context(getattr(test_servers, starter)())
            if url is None:
                raise SystemExit(f"run_engine.py: set {var} or install the server binaries")
            env[var] = url
            env[f"{var}_THROWAWAY"] = "1"
        yield env


def run_case(case: Case, a: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    if case.peers:
        cmd = [a.peers_python, str(HERE / "peers_queue.py"), *case.args]
    else:
        cmd = [a.python, str(HERE / "bench_engine.py"), *case.args]
    started = time.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=a.timeout
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-1500:]
        print(f"## {case.key} FAILED rc={proc.returncode}\n{tail}", file=sys.stderr, flush=True)
        return {"key": case.key, "error": f"rc={proc.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    result["key"] = case.key
    print(f"## {case.key} {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return result


# --------------------------------------------------------------------------- the report
def values(rows: list[dict[str, Any]], key: str, metric: str) -> list[float]:
    return [r[metric] for r in rows if r.get("key") == key and r.get(metric) is not None]


def med(rows: list[dict[str, Any]], key: str, metric: str) -> float | None:
    found = values(rows, key, metric)
    return statistics.median(found) if found else None


def cell(rows: list[dict[str, Any]], key: str, metric: str, digits: int) -> str:
    found = values(rows, key, metric)
    if not found:
        return "-"
    text = f"{statistics.median(found):,.{digits}f}"
    if len(found) > 1:
        text += f" ({min(found):,.{digits}f}-{max(found):,.{digits}f})"
    return text


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**PASS**" if ok else "**MISS**")


def report(rows: list[dict[str, Any]], a: argparse.Namespace, env: dict[str, str]) -> str:
    def m(key: str, metric: str) -> float | None:
        return med(rows, key, metric)

    def first(key: str, field: str) -> str:
        return next((str(r[field]) for r in rows if r.get("key") == key and field in r), "?")

    out = [
        "# Process engine benchmarks (issue 3)",
        "",
        f"taskwarden {revision()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"Python {platform.python_version()} ({platform.machine()}, {os.cpu_count()} CPUs), "
        f"{a.repeats} repeats round-robin, medians (min-max). "
        f"procrastinate {first('procrastinate-drain', 'version')}, "
        f"saq {first('saq-drain', 'version')}.",
        "",
        "PostgreSQL: "
        + server_note(env, "BENCH_PG_URL")
        + "; Redis: "
        + server_note(env, "BENCH_REDIS_URL")
        + ".",
        "",
        f"## Drain: {a.n:,} no-op jobs, concurrency {a.concurrency}",
        "",
        "| system | drain jobs/s | enqueue or launch jobs/s | start-to-start jobs/s | CPU us/job |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label, drain_metric in (
        ("tw-sqlite-drain", "taskwarden SQLite", "drain_per_s"),
        ("tw-pg-drain", "taskwarden PostgreSQL", "drain_per_s"),
        ("procrastinate-drain", "procrastinate (PostgreSQL)", "drain_per_s"),
        ("saq-drain", "saq (Redis)", "drain_per_s"),
    ):
        peer = not key.startswith("tw-")
        out.append(
            f"| {label} | {cell(rows, key, drain_metric, 0)} | "
            f"{cell(rows, key, 'enqueue_per_s' if peer else 'launch_per_s', 0)} | "
            f"{cell(rows, key, 'drain_per_s' if peer else 'start_to_start_per_s', 0)} | "
            f"{'-' if peer else cell(rows, key, 'cpu_us_per_process', 0)} |"
        )
    out += [
        "",
        "taskwarden's drain counts from the first `launch()` call (all N launched at once with "
        "`asyncio.gather`) until `on_change` reported the last process terminal: its launch writes "
        "are inside the time. A peer's drain is the anchor figures' definition, (N-1) / (first job "
        "start -> last job start) with the jobs enqueued beforehand and the worker's boot "
        "excluded, which favours the peer; for the peers the start-to-start column repeats it.",
        "",
        "## Trickle: 200 launches at 50/s into an idle system",
        "",
        "| system | p50 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|",
    ]
    for key, label in (
        ("tw-sqlite-trickle", "taskwarden SQLite"),
        ("tw-pg-trickle", "taskwarden PostgreSQL"),
        ("procrastinate-trickle", "procrastinate (PostgreSQL)"),
        ("saq-trickle", "saq (Redis)"),
    ):
        out.append(
            f"| {label} | {cell(rows, key, 'lat_p50_ms', 2)} | "
            f"{cell(rows, key, 'lat_p99_ms', 2)} | {cell(rows, key, 'lat_mean_ms', 2)} |"
        )
    out += [
        "",
        "Latency: the time just before `launch()` (a peer's enqueue call) to the job's first line. "
        "taskwarden runs the job in the launching process; a peer's worker is another process "
        "(one system-wide monotonic clock).",
        "",
        "## Progress: 1,000,000 `report_progress` calls, 10 processes at once",
        "",
        "| store | cost of the calls s | ns/call | progress writes, peak per process in any "
        "1 s | mean writes/s/process | run wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in (("tw-sqlite-progress", "SQLite"), ("tw-pg-progress", "PostgreSQL")):
        out.append(
            f"| {label} | {cell(rows, key, 'cost_s', 3)} | {cell(rows, key, 'ns_per_call', 0)} | "
            f"{cell(rows, key, 'writes_per_s_per_proc', 0)} | "
            f"{cell(rows, key, 'avg_writes_per_s_per_proc', 1)} | {cell(rows, key, 'wall_s', 2)} |"
        )
    out += [
        "",
        "Each process calls `ctx.report_progress(percent)` 100,000 times in chunks of 1,000 "
        "with a 20 ms pause between chunks (the flusher runs as in real code). Cost: the time "
        "inside the calls. Writes: every `update_progress` the store received, time-stamped.",
        "",
        "## Targets (medians of this run)",
        "",
        "| target | measured | bound | verdict |",
        "|---|---:|---:|---|",
    ]
    proc_drain = m("procrastinate-drain", "drain_per_s")
    targets: list[tuple[str, float | None, str, bool | None]] = []
    sq = m("tw-sqlite-drain", "drain_per_s")
    targets.append(
        ("SQLite drain, processes/s", sq, ">= 5,000", None if sq is None else sq >= 5000)
    )
    pg = m("tw-pg-drain", "drain_per_s")
    ratio = None if pg is None or not proc_drain else pg / proc_drain
    targets.append(
        (
            f"PostgreSQL drain / procrastinate drain ({fmt(pg, 0)} / {fmt(proc_drain, 0)})",
            ratio,
            ">= 4x",
            None if ratio is None else ratio >= 4,
        )
    )
    for key, label, bound in (
        ("tw-sqlite-trickle", "SQLite launch-to-running p50, ms", 1.0),
        ("tw-pg-trickle", "PostgreSQL launch-to-running p50, ms", 2.0),
    ):
        value = m(key, "lat_p50_ms")
        targets.append((label, value, f"<= {bound:g}", None if value is None else value <= bound))
    for key, label in (("tw-sqlite-progress", "SQLite"), ("tw-pg-progress", "PostgreSQL")):
        cost = m(key, "cost_s")
        targets.append(
            (
                f"{label}: 1,000,000 report_progress calls, s",
                cost,
                "< 1",
                None if cost is None else cost < 1,
            )
        )
        writes = m(key, "writes_per_s_per_proc")
        targets.append(
            (
                f"{label}: progress writes per process in any 1 s",
                writes,
                "<= 10",
                None if writes is None else writes <= 10,
            )
        )
    for label, value, bound, ok in targets:
        digits = 2 if value is not None and value < 100 else 0
        out.append(f"| {label} | {fmt(value, digits)} | {bound} | {verdict(ok)} |")
    errors = sorted({f"{r['key']}: {r['error']}" for r in rows if "error" in r})
    if errors:
        out += ["", "Errors: " + "; ".join(errors)]
    return "\n".join(out) + "\n"


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def server_note(env: dict[str, str], var: str) -> str:
    if env.get(f"{var}_THROWAWAY"):
        what = "a throwaway server started by tests/servers.py"
        return what + (" (fsync=off)" if "PG" in var else " (no persistence)")
    return f"the server of ${var}"


def revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(unknown revision)"
    return f"{rev}{' (src/ had uncommitted changes)' if dirty else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--only", default=None, help="regex over case keys, e.g. 'drain'")
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--peers-python", default=str(HERE / ".venv-peers" / "bin" / "python"))
    ap.add_argument("--timeout", type=float, default=900.0, help="s per case process")
    ap.add_argument("--out", default=None, help="also append every raw result (JSON lines)")
    a = ap.parse_args()
    chosen = [c for c in cases(a) if a.only is None or re.search(a.only, c.key)]
    rows: list[dict[str, Any]] = []
    with servers() as env:
        for rep in range(a.repeats):
            print(f"# repeat {rep + 1}/{a.repeats}", file=sys.stderr, flush=True)
            for case in chosen:
                row = run_case(case, a, env)
                row["repeat"] = rep
                rows.append(row)
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
        print(report(rows, a, env), end="")


if __name__ == "__main__":
    main()
