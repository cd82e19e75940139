#!/usr/bin/env bash
# The project's one test command (README, `make test`, .ci/run): sets up what is missing, then runs
# packaging checks, the unit/integration suite (real MLflow and p4p servers) and the e2e suite
# (real kube-apiserver, etcd, controller-manager, scheduler and kwok built from Go modules, cached).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash e2e/build-control-plane.sh
export PATH="${MDO_E2E_BIN:-$HOME/.cache/model-deploy-operator/bin}:$PWD/.venv/bin:$PATH"

echo "== packaging checks (helm lint/template, hadolint, image install steps)"
bash scripts/check-packaging.sh

echo "== tests"
export MDO_E2E_REQUIRE=1  # CI must not skip e2e because a build step went missing
exec .venv/bin/pytest tests e2e -p no:cacheprovider -ra "$@"
