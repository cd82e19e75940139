"""Fixtures shared by the operator tests that talk to the real API server (tests/fixtures/control_plane.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from model_deploy.operator.kube import Kube


@pytest.fixture(scope="session")
def kube_cluster(crd_installed: Any) -> Any:
    """The session's control plane with the CRD installed."""
    return crd_installed


@pytest.fixture
def kube(kube_cluster: Any) -> Kube:
    return Kube.from_environment(kubeconfig=kube_cluster.kubeconfig, request_timeout=15)


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> str:
    """A fresh namespace per test, named after the test module (kube-..., sync-...)."""
    prefix = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").split("_")[0]
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, "test")
    yield name
    kube.delete("v1", "Namespace", None, name)
