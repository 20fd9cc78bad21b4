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

if [ ! -x ../.venv/bin/python ]; then
    echo "bench/run_engine.sh: taskwarden's venv ../.venv is missing: create it first" \
        "(python3 -m venv .venv && .venv/bin/pip install -e '.[postgres]')" >&2
    exit 1
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
