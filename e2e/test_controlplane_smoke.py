"""Smoke check of the e2e control plane: a Deployment's pods get scheduled
(kube-scheduler), created by its ReplicaSet (kube-controller-manager) and
reported Running/Ready (kwok), so the Deployment reaches readyReplicas."""
from __future__ import annotations

import json
import os
import time
import uuid

import pytest

pytestmark = pytest.mark.e2e

REPLICAS = 3


def _deployment(name: str, cp) -> dict:
    image = os.environ.get("MDO_E2E_SMOKE_IMAGE") or (
        "registry.example/x:1" if cp.fake_pods else "registry.k8s.io/pause:3.10"
    )
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": cp.node_selector,
                    "containers": [{"name": "main", "image": image,
                                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
                },
            },
        },
    }


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; last={last!r}")


def _get(cp, *args) -> dict:
    return json.loads(cp.kubectl("get", *args, "-o", "json").stdout)


def test_version_is_stamped(control_plane):
    if control_plane.use_existing:
        pytest.skip("existing cluster")
    v = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert v["serverVersion"]["gitVersion"].startswith("v1.")
    assert v["serverVersion"]["gitVersion"] != "v0.0.0-master+$Format:%H$"
    assert v["clientVersion"]["gitVersion"] == v["serverVersion"]["gitVersion"]


def test_deployment_becomes_ready(control_plane):
    cp = control_plane
    ns = f"smoke-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", ns)
    try:
        # Namespaced default service account comes from the controller-manager.
        _wait(lambda: cp.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
              60, "default serviceaccount")
        cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(_deployment("smoke", cp)))

        def ready():
            d = _get(cp, "deployment", "smoke", "-n", ns)
            return d.get("status", {}).get("readyReplicas") == REPLICAS and d

        d = _wait(ready, 120, "deployment readyReplicas")
        assert d["status"]["replicas"] == REPLICAS
        pods = _get(cp, "pods", "-n", ns, "-l", "app=smoke")["items"]
        assert len(pods) == REPLICAS
        for p in pods:
            assert p["status"]["phase"] == "Running"
            assert p["spec"].get("nodeName")
            if cp.fake_pods:
                assert p["spec"]["nodeName"] == cp.node_name

        # Scale down: the ReplicaSet controller deletes pods, kwok finalizes them.
        cp.kubectl("scale", "-n", ns, "deployment/smoke", "--replicas=1")
        _wait(lambda: len(_get(cp, "pods", "-n", ns, "-l", "app=smoke")["items"]) == 1,
              120, "scale down to 1 pod")
    finally:
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_restart_apiserver(control_plane):
    cp = control_plane
    if cp.use_existing:
        pytest.skip("cannot restart the apiserver of an existing cluster")
    cp.kubectl("create", "configmap", "survives-restart", "--from-literal=k=v")
    cp.restart_apiserver()
    out = cp.kubectl("get", "configmap", "survives-restart", "-o", "jsonpath={.data.k}").stdout
    assert out == "v"
    cp.kubectl("delete", "configmap", "survives-restart")


def test_helm_kube_version_check(control_plane, tmp_path):
    """helm sees a real server version (kubeVersion constraints pass)."""
    cp = control_plane
    chart = tmp_path / "smokechart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: smokechart\nversion: 0.1.0\nkubeVersion: '>=1.28.0-0'\n"
    )
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    ns = f"helm-{uuid.uuid4().hex[:6]}"
    cp.helm("install", "smoke", str(chart), "-n", ns, "--create-namespace", "--wait",
            "--timeout", "60s")
    try:
        kube = cp.kubectl("get", "configmap", "smoke-cm", "-n", ns,
                          "-o", "jsonpath={.data.kube}").stdout
        assert kube.startswith("v1.") and not kube.startswith("v1.0.")
    finally:
        cp.helm("uninstall", "smoke", "-n", ns, check=False)
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
