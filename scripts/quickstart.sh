#!/usr/bin/env bash
# `make quickstart`: install what is missing (venv, control-plane binaries; both cached), then bring up the
# local stack and deploy the demo model (scripts/quickstart.py; flags are passed on, e.g. --exit-after 30).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh && bash e2e/build-control-plane.sh && exec .venv/bin/python scripts/quickstart.py "$@"
