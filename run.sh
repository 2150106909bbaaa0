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
# The oldest Python the pinned dependencies install on (tornado 6.6: Requires-Python >= 3.11).
NEED=3.11

version_of() {  # major.minor.micro of a Python, or nothing if it does not run
    "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null
}

check_python() {
    local have
    have=$(version_of "$PY") || have=""
    if [ -z "$have" ]; then
        echo "run.sh: cannot run $PY; Python $NEED or newer is needed (set PYTHON=/path/to/python3.11 to choose one)" >&2
        exit 1
    fi
    local major=${have%%.*} rest=${have#*.}
    local minor=${rest%%.*}
    if [ "$major" -lt "${NEED%%.*}" ] || { [ "$major" -eq "${NEED%%.*}" ] && [ "$minor" -lt "${NEED#*.}" ]; }; then
        echo "run.sh: Python $NEED or newer is needed (the pinned tornado 6.6 requires it), $PY is $have;" \
             "install it or set PYTHON=/path/to/python$NEED" >&2
        exit 1
    fi
    PY_VERSION=$major.$minor
}

venv_usable() {  # the venv's Python runs and is the same major.minor as $PY
    local have
    [ -x "$VENV/bin/python" ] || return 1
    have=$(version_of "$VENV/bin/python") || return 1
    [ "${have%.*}" = "$PY_VERSION" ]
}

make_venv() {
    if [ -e "$VENV" ] || [ -L "$VENV" ]; then
        echo "rebuilding $VENV: it was made by another Python or is broken" >&2
        rm -rf "$VENV"
    else
        echo "creating virtual environment in $VENV" >&2
    fi
    "$PY" -m venv "$VENV"
}

pip_install() {
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$1"
}

setup() {
    local reqs=$1 stamp="$VENV/.installed-$1"
    check_python
    venv_usable || make_venv
    if [ ! -f "$stamp" ] || [ "$reqs" -nt "$stamp" ] || [ requirements.txt -nt "$stamp" ]; then
        echo "installing $reqs" >&2
        rm -f "$stamp"
        if ! pip_install "$reqs"; then
            # A venv left half-installed (or with a broken pip) by an earlier failure: start afresh once.
            echo "installing $reqs failed; rebuilding $VENV and trying once more" >&2
            rm -rf "$VENV"
            "$PY" -m venv "$VENV"
            pip_install "$reqs" || { echo "run.sh: installing $reqs failed (see above); run ./run.sh again" \
                                          "once the cause is fixed" >&2; exit 1; }
        fi
        touch "$stamp"  # only after a complete install: a failed one is retried next time
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
