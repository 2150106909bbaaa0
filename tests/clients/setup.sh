#!/usr/bin/env bash
# The real clients of the compatibility suite (tests/clients/), each in its own environment
# under .clients/ (ignored by git), pinned. Idempotent: an environment whose pins have not
# changed is left alone (a stamp file holds them), so a second run takes well under a second.
#   tests/clients/setup.sh            set up what is missing or out of date
# The newest openai-python is the one in requirements-dev.txt (the project's .venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DIR="$ROOT/.clients"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$(readlink -f "$ROOT/.venv/bin/python")"; else PY=python3; fi
fi
mkdir -p "$DIR"

# name of a Python environment, then its pins (tests/clients/<name>.txt)
python_env() {
  local name=$1 pins="$ROOT/tests/clients/$1.txt" env="$DIR/$1"
  local want
  want="$("$PY" --version 2>&1) $(sha256sum "$pins" | cut -d' ' -f1)"
  if [ -f "$env/.stamp" ] && [ "$(cat "$env/.stamp")" = "$want" ] && [ -x "$env/bin/python" ]; then
    return 0
  fi
  echo "clients: setting up $name (.clients/$name)"
  rm -rf "$env"
  "$PY" -m venv "$env"
  "$env/bin/pip" install -q --disable-pip-version-check -r "$pins"
  echo "$want" > "$env/.stamp"
}

node_env() {
  local env="$DIR/node" spec="$ROOT/tests/clients/package.json"
  local want
  if ! command -v npm >/dev/null; then
    echo "clients: npm is missing (install Node.js 18+ and npm) for the Node openai client" >&2
    return 1
  fi
  want="$(node --version) $(sha256sum "$spec" | cut -d' ' -f1)"
  if [ -f "$env/.stamp" ] && [ "$(cat "$env/.stamp")" = "$want" ] && [ -d "$env/node_modules/openai" ]; then
    return 0
  fi
  echo "clients: setting up node (.clients/node)"
  rm -rf "$env"
  mkdir -p "$env"
  cp "$spec" "$env/package.json"
  (cd "$env" && npm install --silent --no-audit --no-fund --no-package-lock >/dev/null)
  echo "$want" > "$env/.stamp"
}

python_env openai027
python_env langchain
node_env
