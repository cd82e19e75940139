#!/usr/bin/env bash
# Build (cached), bring up the local control plane, run the smoke tests, bring it down.
#   bash e2e/smoke.sh            # needs pytest (./.venv/bin/pytest or on PATH)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
bash "$HERE/build-control-plane.sh"
PYTEST="${PYTEST:-$ROOT/.venv/bin/pytest}"
[[ -x "$PYTEST" ]] || PYTEST=pytest
MDO_E2E_REQUIRE=1 exec "$PYTEST" -v "$HERE/test_controlplane_smoke.py" "$@"
