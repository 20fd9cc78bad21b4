#!/usr/bin/env bash
# Set up bench/.venv-peers (once), then run the fleet benchmarks with their peers (pgqueuer
# and procrastinate on the same PostgreSQL, the same worker counts) side by side, repeats
# interleaved. The table goes to stdout and to bench/results/fleet.md; progress to stderr.
# Arguments go to `bench_fleet.py run`, e.g. `bench/run_fleet.sh --repeats 3 --n 10000`.
# Servers: $BENCH_PG_URL (default the local postgres) and $BENCH_REDIS_URL (the latency
# rows with a bus).
set -euo pipefail
cd "$(dirname "$0")"
peers=.venv-peers
python=${PYTHON:-python3}

if [ ! -x ../.venv/bin/python ]; then
    echo "bench/run_fleet.sh: creating the project's .venv" >&2
    "$python" -m venv ../.venv
fi
if ! ../.venv/bin/python -c 'import taskwarden, asyncpg, redis' 2>/dev/null; then
    echo "bench/run_fleet.sh: installing taskwarden with its dev extra into ../.venv" >&2
    ../.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '..[dev]'
fi
if ! "$peers/bin/python" -c 'import procrastinate, saq, psycopg, redis, pgqueuer, asyncpg' 2>/dev/null; then
    echo "bench/run_fleet.sh: creating bench/$peers" >&2
    "$python" -m venv "$peers"
    "$peers/bin/python" -m pip install --quiet --disable-pip-version-check \
        'procrastinate==3.10.0' 'saq[redis]==0.26.4' 'psycopg[binary,pool]' \
        'pgqueuer==1.6.0' 'asyncpg'
fi

mkdir -p results
../.venv/bin/python bench_fleet.py run "$@" | tee results/fleet.md.tmp
mv results/fleet.md.tmp results/fleet.md
