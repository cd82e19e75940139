#!/usr/bin/env bash
# Create .venv and install the project with everything the tests and the quickstart need.
# Idempotent: skips pip when pyproject.toml has not changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python >= 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# The images' pins (constraints/) also pin the test environment, so CI tests what ships.
stamp="$VENV/.installed-$(cat pyproject.toml constraints/runtime.txt constraints/operator.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project and its dependencies into $VENV (torch and mlflow: a few minutes the first time)"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet -e '.[dev]' -c constraints/runtime.txt -c constraints/operator.txt
  rm -f "$VENV"/.installed-*
  touch "$stamp"
else
  echo "setup: $VENV is up to date"
fi
