"""pytest fixtures for the e2e suite: a real control plane (see controlplane.py).

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
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlplane import ControlPlane  # noqa: E402


@pytest.fixture(scope="session")
def control_plane():
    cp = ControlPlane(os.environ.get("MDO_E2E_DIR") or None)
    if not cp.use_existing:
        try:
            cp.ensure_binaries(build=os.environ.get("MDO_E2E_BUILD") == "1")
        except Exception as e:  # noqa: BLE001
            if os.environ.get("MDO_E2E_REQUIRE") == "1":
                raise
            pytest.skip(f"control-plane binaries unavailable: {e}")
    old = os.environ.get("KUBECONFIG")
    cp.start()
    os.environ["KUBECONFIG"] = cp.kubeconfig
    try:
        yield cp
    finally:
        cp.stop()
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old


@pytest.fixture(scope="session")
def kubeconfig(control_plane) -> str:
    return control_plane.kubeconfig
