#!/usr/bin/env bash
# Prepare the runtime benchmark (bench/runtime_bench.py):
#   * the project venv .venv (scripts/setup.sh, itself idempotent),
#   * the baseline venv .venv-bench-polylithic with poly-lithic 1.8.0 from PyPI. poly-lithic pins
#     mlflow==2.22.2, which conflicts with the project's mlflow, so it gets its own venv.
# Idempotent: does nothing when both venvs already hold the pinned versions.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BENCH_VENV=${BENCH_VENV:-.venv-bench-polylithic}
POLY_LITHIC_VERSION=1.8.0
LUME_MODEL_VERSION=2.0.1

bash scripts/setup.sh

installed_ok() {
  "$BENCH_VENV/bin/python" - "$POLY_LITHIC_VERSION" "$LUME_MODEL_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
wanted = {"poly-lithic": sys.argv[1], "lume-model": sys.argv[2]}
sys.exit(0 if all(version(name) == v for name, v in wanted.items()) else 1)
EOF
}

if [ ! -x "$BENCH_VENV/bin/python" ]; then
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup-bench: Python >= 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  echo "setup-bench: creating $BENCH_VENV"
  "$PYTHON" -m venv "$BENCH_VENV"
fi

if installed_ok; then
  echo "setup-bench: $BENCH_VENV has poly-lithic $POLY_LITHIC_VERSION and lume-model $LUME_MODEL_VERSION"
else
  echo "setup-bench: installing poly-lithic==$POLY_LITHIC_VERSION lume-model==$LUME_MODEL_VERSION into $BENCH_VENV (torch: a few minutes the first time)"
  "$BENCH_VENV/bin/pip" install --quiet --upgrade pip
  "$BENCH_VENV/bin/pip" install --quiet "poly-lithic==$POLY_LITHIC_VERSION" "lume-model==$LUME_MODEL_VERSION"
  if ! installed_ok; then
    echo "setup-bench: $BENCH_VENV still does not have the pinned versions; see pip's output above" >&2
    exit 1
  fi
fi
