#!/usr/bin/env bash
# Set up bench/.venv-peers (once), then run the process engine benchmarks with their peers
# (procrastinate on PostgreSQL, saq on Redis) side by side. The report goes to stdout and to
# bench/results/engine.md; progress goes to stderr. Arguments go to run_engine.py, e.g.
# `bench/run_engine.sh --repeats 3` or `bench/run_engine.sh --only drain`.
# Servers: $BENCH_PG_URL and $BENCH_REDIS_URL when set, else throwaway ones for the run.
set -euo pipefail
cd "$(dirname "$0")"
peers=.venv-peers
python=${PYTHON:-python3}

# taskwarden's side runs from the project's venv, with what the benchmarks import: the
# PostgreSQL and Redis clients, and the throwaway-server fixtures of tests/servers.py (pytest).
if [ ! -x ../.venv/bin/python ]; then
    echo "bench/run_engine.sh: creating the project's .venv" >&2
    "$python" -m venv ../.venv
fi
if ! ../.venv/bin/python -c 'import taskwarden, asyncpg, redis, pytest' 2>/dev/null; then
    echo "bench/run_engine.sh: installing taskwarden with its dev extra into ../.venv" >&2
    ../.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '..[dev]'
fi
if ! "$peers/bin/python" -c 'import procrastinate, saq, psycopg, redis' 2>/dev/null; then
    echo "bench/run_engine.sh: creating bench/$peers" >&2
    "$python" -m venv "$peers"
    "$peers/bin/python" -m pip install --quiet --disable-pip-version-check \
        'procrastinate==3.10.0' 'saq[redis]==0.26.4' 'psycopg[binary,pool]'
fi

mkdir -p results
../.venv/bin/python run_engine.py --python ../.venv/bin/python \
    --peers-python "$peers/bin/python" "$@" | tee results/engine.md.tmp
mv results/engine.md.tmp results/engine.md
