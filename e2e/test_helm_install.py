"""`helm install` of charts/model-deploy-operator into the real control plane.

- Cluster-wide install: the CRD (from the chart's crds/), ServiceAccount, ClusterRole(Binding), Secret,
  Service and the operator Deployment exist with the values given; the operator pod is scheduled and goes
  Running on the kwok node (kwok fakes it: no container really runs there); `helm uninstall` removes
  everything but the CRD (Helm never deletes CRDs from crds/, so ModelDeployments survive an uninstall).
- Namespaced RBAC (rbac.clusterWide=false): the real operator, authenticated as the chart's
  ServiceAccount (a TokenRequest token), reconciles a ModelDeployment: the chart grants what it needs.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from operator_fixtures import (  # noqa: F401 - fixtures are used by name
    CHART_PATH,
    CRD_NAME,
    GROUP,
    Cluster,
    OperatorFactory,
    cluster,
    condition,
    cr_ready,
    crd,
    drop_namespace,
    local_model_cr,
    operator_factory,
    short_id,
    wait_for,
)

pytestmark = pytest.mark.e2e

IMAGE_REPOSITORY = "registry.invalid/model-deploy-operator"  # never pullable: no real operator may run
IMAGE_TAG = "e2e"
MLFLOW_URI = "http://mlflow.e2e.invalid:5000"
TIMEOUT = 90
EVENT_TIMEOUT = 30  # the operator reacting to a new object through its watch, generous for a loaded machine


def _instance(release: str) -> str:
    return f"app.kubernetes.io/instance={release}"


def _helm_install(control_plane, release: str, namespace: str, *values: str) -> None:
    control_plane.helm(
        "install", release, str(CHART_PATH), "-n", namespace, "--create-namespace", "--wait=false",
        "--set", f"image.repository={IMAGE_REPOSITORY}", "--set", f"image.tag={IMAGE_TAG}",
        "--set", f"mlflow.trackingUri={MLFLOW_URI}", *values,
    )


def _crd_exists(cluster: Cluster) -> bool:
    return any(item.metadata.name == CRD_NAME for item in cluster.extensions.list_custom_resource_definition().items)


def _crd_established(cluster: Cluster) -> bool:
    crd = cluster._plain(cluster.extensions.read_custom_resource_definition(CRD_NAME))
    return any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"].get("conditions") or [])


def _release_objects(cluster: Cluster, namespace: str, release: str) -> dict[str, list[str]]:
    selector = _instance(release)
    found = {kind: [o["metadata"]["name"] for o in cluster.list(kind, namespace, selector)]
             for kind in ("deployment", "service", "serviceaccount", "secret", "pod")}
    found["clusterrole"] = [r.metadata.name for r in cluster.rbac.list_cluster_role(label_selector=selector).items]
    found["clusterrolebinding"] = [
        b.metadata.name for b in cluster.rbac.list_cluster_role_binding(label_selector=selector).items
    ]
    found["role"] = [
        r.metadata.name for r in cluster.rbac.list_namespaced_role(namespace, label_selector=selector).items
    ]
    found["rolebinding"] = [
        b.metadata.name for b in cluster.rbac.list_namespaced_role_binding(namespace, label_selector=selector).items
    ]
    return found


def _can_i(control_plane, service_account: str, *args: str) -> bool:
    result = control_plane.kubectl("auth", "can-i", *args, f"--as={service_account}", check=False)
    return result.stdout.strip() == "yes"


def test_helm_install_cluster_wide_then_uninstall(control_plane, cluster: Cluster):
    release, namespace = f"mdo-{short_id()}", f"mdo-helm-{short_id()}"
    crd_before = _crd_exists(cluster)
    _helm_install(control_plane, release, namespace, "--set", "operator.mlflowPoll.intervalSeconds=5")
    try:
        status = json.loads(control_plane.helm("status", release, "-n", namespace, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed"

        # The CRD comes from the chart's crds/ directory (Helm skips it when it is already installed).
        assert wait_for(lambda: _crd_exists(cluster) and _crd_established(cluster), 30, "the CRD Established")
        if not crd_before:
            crd = cluster._plain(cluster.extensions.read_custom_resource_definition(CRD_NAME))
            assert crd["spec"]["group"] == GROUP

        objects = _release_objects(cluster, namespace, release)
        fullname = f"{release}-model-deploy-operator"
        assert objects["deployment"] == [fullname]
        assert objects["serviceaccount"] == [fullname]
        assert objects["service"] == [f"{fullname}-metrics"]
        assert objects["secret"] == [f"{fullname}-mlflow"]
        assert objects["clusterrole"] == [fullname] and objects["clusterrolebinding"] == [fullname]
        assert objects["role"] == [] and objects["rolebinding"] == []

        secret = cluster.get("secret", namespace, f"{fullname}-mlflow")
        assert base64.b64decode(secret["data"]["MLFLOW_TRACKING_URI"]).decode() == MLFLOW_URI

        binding = cluster._plain(cluster.rbac.read_cluster_role_binding(fullname))
        assert binding["roleRef"]["name"] == fullname
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": fullname, "namespace": namespace}]

        deployment = cluster.get("deployment", namespace, fullname)
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
        pod_spec = deployment["spec"]["template"]["spec"]
        assert pod_spec["serviceAccountName"] == fullname
        (container,) = pod_spec["containers"]
        assert container["image"] == f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MDO_NAMESPACE"] == namespace
        assert env["MDO_MLFLOW_POLL_INTERVAL_SECONDS"] == "5"
        assert json.loads(env["MDO_WATCH_NAMESPACES"]) == []  # cluster-wide: every namespace

        # What the operator uses, and no more: checked by the API server's authorizer for the chart's SA.
        sa = f"system:serviceaccount:{namespace}:{fullname}"
        mdep = f"modeldeployments.{GROUP}"
        for verb, resource, subresource in (
            ("watch", mdep, None), ("patch", mdep, None), ("patch", mdep, "status"),
            ("create", "deployments.apps", None), ("patch", "services", None), ("patch", "configmaps", None),
            ("create", "events", None),
        ):
            extra = [f"--subresource={subresource}"] if subresource else []
            assert _can_i(control_plane, sa, verb, resource, *extra, "--all-namespaces"), \
                f"the chart does not let the operator {verb} {resource} {subresource or ''}"
        for verb, resource in (("get", "secrets"), ("create", "pods"), ("delete", "nodes")):
            assert not _can_i(control_plane, sa, verb, resource, "--all-namespaces"), f"{sa} may {verb} {resource}"

        if control_plane.fake_pods:
            # No container runs on kwok's node: "Running" is kwok's fake, which is all this checks.
            pod = wait_for(
                lambda: [p for p in cluster.list("pod", namespace, _instance(release))
                         if p["status"].get("phase") == "Running"],
                TIMEOUT, "the operator pod Running on the kwok node",
                diagnostics=lambda: cluster.describe(namespace),
            )[0]
            assert pod["spec"]["nodeName"] == control_plane.node_name
            wait_for(lambda: (cluster.get("deployment", namespace, fullname)["status"].get("readyReplicas") == 1),
                     TIMEOUT, "the operator Deployment ready")
    finally:
        control_plane.helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "60s", check=False)

    wait_for(lambda: not any(_release_objects(cluster, namespace, release).values()), TIMEOUT,
             "helm uninstall to remove every object of the release",
             diagnostics=lambda: str(_release_objects(cluster, namespace, release)))
    # Helm never deletes CRDs it installed from crds/ (deleting one deletes every ModelDeployment).
    assert _crd_exists(cluster)
    drop_namespace(control_plane, namespace)


def _service_account_kubeconfig(control_plane, namespace: str, service_account: str, path: Path) -> str:
    """A kubeconfig for the same cluster as the admin one, authenticated with a ServiceAccount token."""
    token = control_plane.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    context_name = admin.get("current-context")
    context = next(c["context"] for c in admin["contexts"] if c["name"] == context_name)
    cluster_entry = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster_entry],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster_entry["name"], "user": service_account,
                                                "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _chart_operator_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The literal MDO_* environment of the chart's operator container (ports left out)."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {
        entry["name"]: entry["value"] for entry in container["env"]
        if entry["name"].startswith("MDO_") and "value" in entry
        and entry["name"] not in ("MDO_METRICS_PORT", "MDO_LIVENESS_PORT")
    }


def test_namespaced_rbac_is_enough_for_the_operator(
    control_plane, cluster: Cluster, crd, operator_factory: OperatorFactory, tmp_path: Path
):
    release, namespace = f"mdo-{short_id()}", f"mdo-helm-ns-{short_id()}"
    _helm_install(control_plane, release, namespace, "--set", "rbac.clusterWide=false",
                  "--set", "operator.mlflowPoll.enabled=false")
    try:
        fullname = f"{release}-model-deploy-operator"
        objects = _release_objects(cluster, namespace, release)
        assert objects["role"] == [fullname] and objects["rolebinding"] == [fullname]
        assert objects["clusterrole"] == [] and objects["clusterrolebinding"] == []
        wait_for(lambda: cluster.get("serviceaccount", namespace, "default"), 60, "the default ServiceAccount")

        kubeconfig = _service_account_kubeconfig(control_plane, namespace, fullname, tmp_path / "sa.kubeconfig")
        who = subprocess.run(
            [control_plane.bin("kubectl"), "--kubeconfig", kubeconfig, "auth", "whoami", "-o", "json"],
            capture_output=True, text=True, check=True,
        )
        assert json.loads(who.stdout)["status"]["userInfo"]["username"] == \
            f"system:serviceaccount:{namespace}:{fullname}"

        # The real operator as the chart's ServiceAccount, configured with the MDO_* environment the chart
        # gives its container (watched namespaces, kopf scanning off for namespaced RBAC, ...), except the
        # ports (local free ones, so several runs never collide).
        chart_env = _chart_operator_env(cluster.get("deployment", namespace, fullname))
        assert json.loads(chart_env["MDO_WATCH_NAMESPACES"]) == [namespace]
        # Its periodic resync is pushed out of the picture: only kopf's watch (the event path) can act in
        # time, and a namespaced install must react as promptly as a cluster-wide one.
        chart_env["MDO_STATUS_RESYNC_SECONDS"] = "300"
        operator = operator_factory(namespace, kubeconfig=kubeconfig, name="sa-operator", extra_env=chart_env)
        name = f"rbac-{short_id()}"
        cluster.create_cr(namespace, local_model_cr(name, node_selector=control_plane.node_selector))
        cr = wait_for(
            lambda: (c := cluster.cr(namespace, name)) and (c.get("status") or {}).get("observedGeneration") == 1
            and cluster.get("deployment", namespace, name) and c,
            EVENT_TIMEOUT, "the operator (as the chart's ServiceAccount) to deploy and write the status",
            diagnostics=lambda: cluster.describe(namespace) + "\noperator log:\n" + operator.log_tail(30),
        )
        assert condition(cr, "Degraded").get("reason") != "Forbidden", condition(cr, "Degraded")
        for kind, object_name in (("configmap", f"{name}-pipeline"), ("service", f"{name}-metrics")):
            assert cluster.get(kind, namespace, object_name) is not None, f"{kind} {object_name} missing"
        if control_plane.fake_pods:
            wait_for(lambda: cr_ready(cluster.cr(namespace, name)), TIMEOUT, "Ready=True",
                     diagnostics=lambda: cluster.describe(namespace))
        # Nothing the operator does is refused, and it does not even try what the chart deliberately does
        # not grant (cluster-scoped lists of CRDs and namespaces in namespaced mode).
        refused = [line for line in operator.log_text().splitlines()
                   if "Forbidden" in line or "forbidden" in line or " 403" in line]
        assert refused == [], "\n".join(refused[:5])
    finally:
        control_plane.helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "60s", check=False)
        drop_namespace(control_plane, namespace)
