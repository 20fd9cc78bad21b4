#!/usr/bin/env bash
# Set up bench/.venv313 (once) and run the in-process micro benchmarks. The report goes to
# stdout and to bench/results/micro.md; progress goes to stderr. Arguments go to
# run_micro.py, e.g. `bench/run.sh --repeats 3` or `bench/run.sh --only 't_seq_'`.
# PYTHON=/path/to/python3.13 picks the interpreter; by default the newest Python >= 3.12 found.
set -euo pipefail
cd "$(dirname "$0")"
venv=.venv313

version_of() {  # prints e.g. 313 for Python 3.13, nothing if it is not a Python
    "$1" -c 'import sys; print(sys.version_info[0] * 100 + sys.version_info[1])' 2>/dev/null || true
}

pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
        return
    fi
    local best="" best_version=0 candidate version
    for candidate in python3.14 python3.13 python3.12 python3 \
        "$HOME"/.pyenv/versions/3.*/bin/python3; do
        candidate=$(command -v "$candidate" 2>/dev/null) || continue
        version=$(version_of "$candidate")
        if [ -n "$version" ] && [ "$version" -gt "$best_version" ]; then
            best=$candidate
            best_version=$version
        fi
    done
    echo "$best"
}

if ! "$venv/bin/python" -c 'import anyio, hother.cancelable, psutil, taskwarden' 2>/dev/null; then
    python=$(pick_python)
    version=$(version_of "${python:-false}")
    if [ -z "$version" ] || [ "$version" -lt 312 ]; then
        echo "bench/run.sh: needs Python 3.12 or newer (hother-cancelable requires it);" \
            "set PYTHON=/path/to/python3.13" >&2
        exit 1
    fi
    echo "bench/run.sh: creating bench/$venv with $python" >&2
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -e .. anyio hother-cancelable psutil
fi

mkdir -p results
"$venv/bin/python" run_micro.py --python "$venv/bin/python" "$@" | tee results/micro.md.tmp
mv results/micro.md.tmp results/micro.md
