#!/usr/bin/env bash
# One command to set up and run the gateway.
#   ./run.sh            start the gateway (needs BASE_URL, see README.md)
#   ./run.sh --demo     start it against the bundled demo upstream (no account needed)
#   ./run.sh test       set up and run the whole test suite
#   ./run.sh lint       ruff and the type check (mypy), as CI runs them
#   ./run.sh bench ...  run the benchmarks in bench/
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY=${PYTHON:-python3}

setup() {
    local reqs=$1 stamp="$VENV/.installed-$1"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating virtual environment in $VENV" >&2
        "$PY" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$reqs" -nt "$stamp" ] || [ requirements.txt -nt "$stamp" ]; then
        echo "installing $reqs" >&2
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
        touch "$stamp"
    fi
}

case "${1:-}" in
    test)
        shift
        setup requirements-dev.txt
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    lint)
        shift
        setup requirements-dev.txt
        "$VENV/bin/ruff" check .
        exec "$VENV/bin/mypy"
        ;;
    bench)
        shift
        setup requirements-dev.txt
        exec "$VENV/bin/python" -m bench "$@"
        ;;
    *)
        setup requirements.txt
        exec "$VENV/bin/python" server.py "$@"
        ;;
esac
