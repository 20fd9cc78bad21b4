#!/usr/bin/env bash
# Cross-process cancel latency: taskwarden over Redis, PostgreSQL and the local bus, beside
# procrastinate, saq and arq, in one run; prints one markdown table and saves it as
# bench/results/remote_cancel.md (progress goes to stderr).
#
# Creates bench/.venv-cancel-peers (the first time) with the peers from PyPI. Servers:
# BENCH_REDIS_URL / BENCH_PG_URL when set (e.g. the machine's redis://127.0.0.1:6379/0 and
# postgresql://postgres@127.0.0.1:5432/postgres), otherwise throwaway ones started from the
# installed redis-server and PostgreSQL binaries (tests/servers.py). Arguments go to
# bench_remote_cancel.py, e.g. `--repeats 1 --trials 20` or `--only redis,local --profile`.
# PYTHON=... picks the interpreter of taskwarden's side (default .venv/bin/python) and
# PEERS_PYTHON=... the one the peers' venv is created with (default python3).
set -euo pipefail
bench=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$bench")
python=${PYTHON:-$root/.venv/bin/python}
venv=$bench/.venv-cancel-peers

if ! "$venv/bin/python" -c 'import arq, saq, procrastinate, psycopg' 2>/dev/null; then
    echo "run_remote_cancel.sh: creating bench/.venv-cancel-peers" >&2
    "${PEERS_PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        arq 'saq[redis]' procrastinate 'psycopg[binary,pool]'
fi

mkdir -p "$bench/results"
"$python" "$bench/bench_remote_cancel.py" --peers-python "$venv/bin/python" "$@" \
    | tee "$bench/results/remote_cancel.md.tmp"
mv "$bench/results/remote_cancel.md.tmp" "$bench/results/remote_cancel.md"
