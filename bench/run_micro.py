#!/usr/bin/env python3
"""Run every ``micro.py`` case round-robin in fresh processes; print medians and the targets.

    python bench/run_micro.py [--python bench/.venv313/bin/python] [--repeats 5]
                              [--n 100000] [--cancel-trials 1000] [--only REGEX]
                              [--out raw.jsonl]

Each repeat runs every case once, one fresh process per case, so machine noise spreads over
all cases alike. The tables show the median over the repeats, and the issue's targets are
ratios of those medians, measured in this same run. This script needs only the standard
library; the cases run under ``--python`` (hother-cancelable needs Python 3.12 or newer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_PYTHON = HERE / ".venv313" / "bin" / "python"

Rows = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One of the issue's performance targets: ``measured / baseline`` against a bound."""

    label: str
    measured: str
    baseline: str
    metric: str
    bound: float
    at_most: bool
    """True: the ratio must be <= bound; False: it must be >= bound."""
    peer: str | None = None
    """The same ratio for hother-cancelable in place of ``measured``, for context."""


TARGETS = (
    Target(
        label="enter/exit of a registered scope around a no-op, vs asyncio.timeout",
        measured="t_seq_taskwarden_registered",
        baseline="t_seq_asyncio_timeout",
        metric="us_per_op",
        bound=3.0,
        at_most=True,
        peer="t_seq_hother_registered",
    ),
    Target(
        label="enter/exit: hother registered scope / taskwarden registered scope",
        measured="t_seq_hother_registered",
        baseline="t_seq_taskwarden_registered",
        metric="us_per_op",
        bound=30.0,
        at_most=False,
    ),
    Target(
        label="{n} concurrent tracked tasks, vs bare asyncio.gather",
        measured="t_conc_taskwarden_registered",
        baseline="t_conc_gather",
        metric="us_per_op",
        bound=1.5,
        at_most=True,
        peer="t_conc_hother_registered",
    ),
    Target(
        label="memory per pending tracked operation, vs a bare task",
        measured="m_taskwarden_registered",
        baseline="m_bare_task",
        metric="bytes_per_op",
        bound=1.5,
        at_most=True,
        peer="m_hother_registered",
    ),
    Target(
        label="cancel latency p50 of a running operation, vs a bare task",
        measured="c_taskwarden",
        baseline="c_bare_task",
        metric="p50_us",
        bound=2.0,
        at_most=True,
        peer="c_hother",
    ),
)


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values that are not None, or None."""
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for the table, ``-`` when missing."""
    return "-" if value is None else f"{value:,.{digits}f}"


def metric_of(rows: Rows, name: str, metric: str) -> list[float]:
    """Every repeat's value of ``metric`` for case ``name``."""
    return [row[metric] for row in rows.get(name, []) if metric in row]


def ratio(rows: Rows, top: str, bottom: str, metric: str) -> float | None:
    """The ratio of the medians of two cases, or None if either is missing."""
    a, b = median(metric_of(rows, top, metric)), median(metric_of(rows, bottom, metric))
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratio_spread(rows: Rows, top: str, bottom: str, metric: str) -> tuple[float, float] | None:
    """Min and max of the per-repeat ratios (cases of one repeat ran next to each other)."""
    tops = {row["repeat"]: row[metric] for row in rows.get(top, [])}
    bottoms = {row["repeat"]: row[metric] for row in rows.get(bottom, [])}
    ratios = [tops[r] / bottoms[r] for r in tops.keys() & bottoms.keys() if bottoms[r]]
    return (min(ratios), max(ratios)) if ratios else None


def list_cases(python: str) -> list[str]:
    """The case names micro.py knows, in its order."""
    listed = subprocess.run(
        [python, str(HERE / "micro.py"), "--list"], capture_output=True, text=True, check=True
    )
    return listed.stdout.split()


def git_revision() -> str:
    """The commit of the tree the cases import taskwarden from, and whether src/ is dirty."""
    try:
        head = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (src/ has uncommitted changes)" if dirty else head


def run_all(args: argparse.Namespace, cases: list[str]) -> Rows:
    """Run the cases round-robin, ``args.repeats`` times; return every JSON line per case."""
    rows: Rows = {name: [] for name in cases}
    raw = open(args.out, "a", encoding="utf-8") if args.out else None  # noqa: SIM115
    try:
        for repeat in range(args.repeats):
            for name in cases:
                n = args.cancel_trials if name.startswith("c_") else args.n
                command = [args.python, str(HERE / "micro.py"), name, "--n", str(n)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    tail = done.stderr.strip()[-800:]
                    print(f"# FAIL {name} repeat {repeat}: {tail}", file=sys.stderr, flush=True)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row["repeat"] = repeat
                rows[name].append(row)
                if raw is not None:
                    raw.write(json.dumps(row) + "\n")
                    raw.flush()
                headline = row.get("us_per_op", row.get("bytes_per_op", row.get("p50_us")))
                print(f"# repeat {repeat} {name}: {headline:.2f}", file=sys.stderr, flush=True)
    finally:
        if raw is not None:
            raw.close()
    return rows


def family_table(
    rows: Rows,
    cases: list[str],
    prefix: str,
    title: str,
    metric: str,
    baseline: str,
    digits: int,
    extra: Sequence[tuple[str, Callable[[list[dict[str, Any]]], str]]] = (),
) -> list[str]:
    """A markdown table of one case family: median, min, max, ratio to its baseline."""
    head = f"| {title} | median | min | max | x {baseline} |"
    rule = "|---|---:|---:|---:|---:|"
    for label, _ in extra:
        head += f" {label} |"
        rule += "---:|"
    lines = [head, rule]
    for name in cases:
        if not name.startswith(prefix) or not rows.get(name):
            continue
        values = metric_of(rows, name, metric)
        line = (
            f"| {name} | {fmt(median(values), digits)} | {fmt(min(values), digits)} | "
            f"{fmt(max(values), digits)} | {fmt(ratio(rows, name, baseline, metric))} |"
        )
        for _, render in extra:
            line += f" {render(rows[name])} |"
        lines.append(line)
    return lines


def peak_mib(runs: list[dict[str, Any]]) -> str:
    """The median peak RSS of a case's processes, in MiB."""
    return fmt(median([max(r["rss_peak_kib"], r.get("rss_held_kib", 0)) / 1024 for r in runs]), 1)


def targets_table(rows: Rows, n: int) -> list[str]:
    """The issue's targets: ratio of medians, per-repeat spread, bound, PASS or MISS."""
    lines = [
        "| target | ratio of medians | per-repeat min-max | bound | verdict | hother, same ratio |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for target in TARGETS:
        value = ratio(rows, target.measured, target.baseline, target.metric)
        spread = ratio_spread(rows, target.measured, target.baseline, target.metric)
        if value is None:
            verdict = "n/a"
        elif target.at_most:
            verdict = "PASS" if value <= target.bound else "MISS"
        else:
            verdict = "PASS" if value >= target.bound else "MISS"
        peer = (
            ratio(rows, target.peer, target.baseline, target.metric)
            if target.peer is not None
            else None
        )
        bound = f"{'<=' if target.at_most else '>='} {target.bound:g}x"
        spread_text = "-" if spread is None else f"{spread[0]:.2f}-{spread[1]:.2f}"
        label = target.label.format(n=f"{n:,}")
        lines.append(
            f"| {label} ({target.measured} / {target.baseline}) | "
            f"{'-' if value is None else fmt(value) + 'x'} | "
            f"{spread_text} | {bound} | **{verdict}** | "
            f"{'-' if peer is None else fmt(peer) + 'x'} |"
        )
    return lines


def source_note(rows: Rows) -> str:
    """Whether every taskwarden case measured the same source (digests from micro.py)."""
    digests = sorted(
        {r["taskwarden_src"] for runs in rows.values() for r in runs if r.get("taskwarden_src")}
    )
    if len(digests) <= 1:
        return f"taskwarden source digest {digests[0] if digests else '-'} in every case"
    return (
        f"WARNING: taskwarden's source changed during the run ({len(digests)} digests: "
        f"{', '.join(digests)}); re-run for a clean comparison"
    )


def report(
    args: argparse.Namespace, cases: list[str], rows: Rows, started: str, revision: str
) -> str:
    """The whole markdown report."""
    any_row = next((r for runs in rows.values() for r in runs), {})
    versions: dict[str, str] = {}
    for runs in rows.values():
        for row in runs:
            versions.update(row.get("versions", {}))
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    out = [
        "# taskwarden micro benchmarks (in-process)",
        "",
        f"- started {started}, python {any_row.get('python', '?')} "
        f"({os.path.abspath(args.python)}), "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average at the end {load}",
        f"- taskwarden at {revision} when the run started; {source_note(rows)}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
        f"- {args.repeats} repeats, round-robin, one fresh process per case and repeat; "
        f"N = {args.n:,} ops (t_, m_), {args.cancel_trials:,} trials (c_); medians over repeats",
        "",
        "## Targets (issue 2), as ratios within this run",
        "",
        *targets_table(rows, args.n),
    ]
    sections = (
        (
            "## Sequential enter/exit around a no-op (us/op)",
            family_table(rows, cases, "t_seq_", "case", "us_per_op", "t_seq_asyncio_timeout", 3),
        ),
        (
            f"## {args.n:,} concurrent tasks, create -> all done (us/op)",
            family_table(
                rows,
                cases,
                "t_conc_",
                "case",
                "us_per_op",
                "t_conc_gather",
                2,
                extra=(("peak RSS MiB", peak_mib),),
            ),
        ),
        (
            f"## Memory per pending operation ({args.n:,} parked on an asyncio.Event; "
            "RSS delta / N, bytes)",
            family_table(
                rows,
                cases,
                "m_",
                "case",
                "bytes_per_op",
                "m_bare_task",
                0,
                extra=(
                    (
                        "start us/op",
                        lambda runs: fmt(median([r["start_us_per_op"] for r in runs])),
                    ),
                    (
                        "end us/op (release or cancel_all)",
                        lambda runs: fmt(median([r["end_us_per_op"] for r in runs])),
                    ),
                    ("peak RSS MiB", peak_mib),
                ),
            ),
        ),
        (
            "## Cancel latency of a running operation: request -> its `finally` (us)\n\n"
            "p50 of each run (median, min, max over the repeats), then the median p99.",
            family_table(
                rows,
                cases,
                "c_",
                "case (p50)",
                "p50_us",
                "c_bare_task",
                2,
                extra=(("p99 median", lambda runs: fmt(median([r["p99_us"] for r in runs]))),),
            ),
        ),
    )
    for heading, table in sections:
        if len(table) > 2:  # more than the header and the rule
            out += ["", heading, "", *table]
    out.append("")
    return "\n".join(out)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--python",
        default=str(DEFAULT_PYTHON) if DEFAULT_PYTHON.exists() else sys.executable,
        help="interpreter that runs the cases (default: bench/.venv313/bin/python if present)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=100_000, help="ops per t_ and m_ case")
    parser.add_argument("--cancel-trials", type=int, default=1000, help="trials per c_ case")
    parser.add_argument("--only", default=None, help="regex: run only the matching cases")
    parser.add_argument("--out", default=None, help="append every raw JSON line to this file")
    args = parser.parse_args()

    cases = list_cases(args.python)
    if args.only:
        cases = [name for name in cases if re.search(args.only, name)]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    revision = git_revision()
    rows = run_all(args, cases)
    print(report(args, cases, rows, started, revision))


if __name__ == "__main__":
    main()
