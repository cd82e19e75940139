"""`model-manager deploy|status|terminate --via kubernetes` against the real API server (no operator:
this checks what the command writes and reads, not the rollout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from model_deploy.operator.crd import API_VERSION, KIND
from model_deploy.operator.kube import Kube

pytestmark = pytest.mark.e2e


def model_manager(*args: str, kubeconfig: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    return subprocess.run([sys.executable, "-m", "model_deploy.runtime", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_deploy_status_terminate_through_a_modeldeployment(crd_installed):
    kubeconfig = crd_installed.kubeconfig
    kube = Kube.from_environment(kubeconfig=kubeconfig)

    result = model_manager("deploy", "-n", "Cli Model", "-v", "4", "-p", "--via", "kubernetes", "-o", "json",
                           kubeconfig=kubeconfig)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    cr = kube.get(API_VERSION, KIND, "default", summary["name"])
    assert cr["spec"]["model"]["mlflow"] == {"name": "Cli Model", "version": "4"}
    assert cr["spec"]["publish"] is True

    result = model_manager("status", "-n", "Cli Model", "--via", "kubernetes", "-o", "json", kubeconfig=kubeconfig)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == summary["name"]

    result = model_manager("terminate", "-n", "Cli Model", "--via", "kubernetes", "--wait", "30",
                           kubeconfig=kubeconfig)
    assert result.returncode == 0, result.stderr
    assert kube.get(API_VERSION, KIND, "default", summary["name"]) is None

    result = model_manager("terminate", "-n", "Cli Model", "--via", "kubernetes", kubeconfig=kubeconfig)
    assert result.returncode == 1 and "no ModelDeployment default/" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_request_is_refused_before_reaching_the_cluster(crd_installed):
    result = model_manager("deploy", "-n", "m", "-v", "abc", "--via", "kubernetes", kubeconfig=crd_installed.kubeconfig)
    assert result.returncode == 1
    assert "spec.model.mlflow" in result.stderr and "Traceback" not in result.stderr
