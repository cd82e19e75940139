"""The e2e suite's fixtures: `control_plane`, `kubeconfig` and `crd_installed` live in
tests/fixtures/control_plane.py (shared with tests/, one cluster per session; loaded by the root conftest).

The control plane itself: see controlplane.py.

Fixtures:
  control_plane  session-scoped ControlPlane, started once, stopped at the end.
  kubeconfig     path of its admin kubeconfig (also exported as $KUBECONFIG).

Environment:
  MDO_E2E_USE_EXISTING_CLUSTER=1 + KUBECONFIG  use that cluster (e.g. kind).
  MDO_E2E_BIN      binary cache dir (default ~/.cache/model-deploy-operator/bin).
  MDO_E2E_BUILD=1  build missing binaries first (bash e2e/build-control-plane.sh).
  MDO_E2E_REQUIRE=1  fail (instead of skip) when binaries are missing.
  MDO_E2E_DIR      run dir to use (kept afterwards); default a temp dir.
  MDO_E2E_KEEP=1   keep the temp run dir (logs) after the session.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import controlplane` in e2e tests
