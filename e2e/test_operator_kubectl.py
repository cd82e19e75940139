"""kubectl-applied ModelDeployments: rendered objects, ownership, config edits roll the pods, pausing.

All against the real API server with the operator running as a subprocess. Pods only become Ready on
kwok's fake node; on an existing cluster (kind) the Ready checks are skipped and the rest still runs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from model_deploy.runtime.config import load_config
from operator_fixtures import (  # noqa: F401 - fixtures are used by name
    ANNOTATION_CHECKSUM,
    FIELD_MANAGER,
    LABEL_DEPLOYMENT,
    Cluster,
    OperatorFactory,
    OperatorProcess,
    REPO_ROOT,
    cluster,
    condition,
    controller_ref,
    cr_ready,
    crd,
    local_model_cr,
    module_namespace,
    module_operator_factory,
    pipeline_config,
    short_id,
    wait_for,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 60
EXAMPLES = REPO_ROOT / "examples"


@pytest.fixture(scope="module")
def kubectl_operator(module_operator_factory: OperatorFactory, module_namespace: str) -> OperatorProcess:
    # Short resync: a referenced ConfigMap is not watched; the resync notices its edits.
    return module_operator_factory(module_namespace, resync_seconds=3, name="kubectl-operator")


def _apply(control_plane, namespace: str, body: dict[str, Any]) -> None:
    # JSON, not PyYAML output: kubectl reads YAML 1.1, where a bare `y` key (as in the config) means true.
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def _template_checksum(deployment: dict[str, Any]) -> str:
    return deployment["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CHECKSUM]


def _wait(cluster: Cluster, namespace: str, check, what: str, timeout: float = TIMEOUT):
    return wait_for(check, timeout, what, diagnostics=lambda: cluster.describe(namespace))


def _wait_cr_ready(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return _wait(cluster, namespace, lambda: (cr := cluster.cr(namespace, name)) and cr_ready(cr) and cr,
                 f"{name} Ready=True")


def _active_replicasets(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return [
        rs for rs in cluster.list("replicaset", namespace, f"app.kubernetes.io/instance={name}")
        if (rs["spec"].get("replicas") or 0) > 0
    ]


def _assert_owned_by(obj: dict[str, Any], cr: dict[str, Any]) -> None:
    ref = controller_ref(obj)
    kind_name = f"{obj.get('kind', '?')}/{obj['metadata']['name']}"
    assert ref is not None, f"{kind_name} has no controller ownerReference"
    assert (ref["kind"], ref["name"], ref["uid"]) == ("ModelDeployment", cr["metadata"]["name"], cr["metadata"]["uid"])
    assert ref["apiVersion"] == "deploy.lume.slac.stanford.edu/v1alpha1"
    assert ref.get("blockOwnerDeletion") is True
    assert obj["metadata"]["labels"][LABEL_DEPLOYMENT] == cr["metadata"]["name"]
    # Written by server-side apply under the operator's field manager.
    managers = {(m["manager"], m["operation"]) for m in obj["metadata"].get("managedFields") or []}
    assert (FIELD_MANAGER, "Apply") in managers, managers


def test_inline_config_deploys_rolls_and_pauses(
    control_plane, cluster: Cluster, module_namespace: str, kubectl_operator: OperatorProcess
):
    namespace, name = module_namespace, f"inline-{short_id()}"
    body = local_model_cr(name, node_selector=control_plane.node_selector, metricsPort=9200)
    _apply(control_plane, namespace, body)

    # --- the rendered objects, owned by the CR --------------------------------------------------------
    configmap = _wait(cluster, namespace, lambda: cluster.get("configmap", namespace, f"{name}-pipeline"),
                      "the pipeline ConfigMap")
    deployment = _wait(cluster, namespace, lambda: cluster.get("deployment", namespace, name), "the Deployment")
    service = _wait(cluster, namespace, lambda: cluster.get("service", namespace, f"{name}-metrics"),
                    "the metrics Service")
    cr = cluster.cr(namespace, name)
    for obj, kind in ((configmap, "ConfigMap"), (deployment, "Deployment"), (service, "Service")):
        obj.setdefault("kind", kind)
        _assert_owned_by(obj, cr)
    assert [len(cluster.owned(kind, namespace, name)) for kind in ("configmap", "deployment", "service")] == [1, 1, 1]

    # The ConfigMap holds exactly the inline config, in a form the runtime loads.
    text = configmap["data"]["pipeline.yaml"]
    assert yaml.safe_load(text) == body["spec"]["config"]["inline"]
    assert list(load_config(text).modules), "the runtime cannot load the rendered pipeline config"

    spec = deployment["spec"]
    assert spec["strategy"]["type"] == "Recreate"  # never two pipelines writing the same PVs
    assert spec["replicas"] == 1
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["model-manager"]
    assert container["args"] == [
        "-l", "/models/demo/model.py:Factory", "-c", "/etc/model-deploy/pipeline.yaml", "--metrics-port", "9200",
    ]
    assert {"name": "pipeline-config", "mountPath": "/etc/model-deploy", "readOnly": True} in container["volumeMounts"]
    assert any(v.get("configMap", {}).get("name") == f"{name}-pipeline" for v in pod["volumes"])
    assert pod.get("nodeSelector") == (control_plane.node_selector or None)
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert [p["port"] for p in service["spec"]["ports"]] == [9200]
    checksum_v1 = _template_checksum(deployment)

    if control_plane.fake_pods:
        cr = _wait_cr_ready(cluster, namespace, name)
        status = cr["status"]
        assert status["phase"] == "running"
        assert (status["deploymentName"], status["replicas"], status["readyReplicas"]) == (name, 1, 1)
        assert status["configChecksum"] == checksum_v1
        assert status["modelUri"] == "/models/demo/model.py:Factory"
        pods = cluster.list("pod", namespace, f"app.kubernetes.io/instance={name}")
        assert [(p["status"]["phase"], p["spec"]["nodeName"]) for p in pods] == [("Running", control_plane.node_name)]

    # --- edit the config: new ConfigMap text, new checksum, new ReplicaSet ------------------------------
    old_rs = {rs["metadata"]["name"] for rs in _active_replicasets(cluster, namespace, name)}
    body["spec"]["config"]["inline"] = pipeline_config(scale=2.5)
    _apply(control_plane, namespace, body)
    deployment = _wait(
        cluster, namespace,
        lambda: (d := cluster.get("deployment", namespace, name)) and _template_checksum(d) != checksum_v1 and d,
        "the Deployment's pod template checksum to change",
    )
    assert "* 2.5" in cluster.get("configmap", namespace, f"{name}-pipeline")["data"]["pipeline.yaml"]
    new_rs = _wait(
        cluster, namespace,
        lambda: [rs for rs in _active_replicasets(cluster, namespace, name) if rs["metadata"]["name"] not in old_rs],
        "a new ReplicaSet for the new pod template",
    )
    assert len(new_rs) == 1
    if control_plane.fake_pods:
        cr = _wait(cluster, namespace,
                   lambda: (c := cluster.cr(namespace, name)) and cr_ready(c)
                   and c["status"].get("configChecksum") == _template_checksum(deployment) and c,
                   "Ready=True on the new config")
        # Recreate: the old ReplicaSet is scaled to zero, only the new one runs.
        assert [rs["metadata"]["name"] for rs in _active_replicasets(cluster, namespace, name)] == [
            new_rs[0]["metadata"]["name"]
        ]

    # --- pause: scaled to zero, Ready=False reason Paused ----------------------------------------------
    control_plane.kubectl("patch", "mdep", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"paused":true}}')
    _wait(cluster, namespace, lambda: cluster.get("deployment", namespace, name)["spec"]["replicas"] == 0,
          "the Deployment scaled to 0")
    cr = _wait(cluster, namespace,
               lambda: (c := cluster.cr(namespace, name)) and condition(c, "Ready").get("reason") == "Paused"
               and c["status"].get("observedGeneration") == c["metadata"]["generation"] and c,
               "Ready reason Paused")
    assert condition(cr, "Ready")["status"] == "False"
    assert condition(cr, "Degraded")["status"] == "False"
    _wait(cluster, namespace, lambda: cluster.list("pod", namespace, f"app.kubernetes.io/instance={name}") == [],
          "the runtime pods to be gone")
    _wait(cluster, namespace, lambda: cluster.cr(namespace, name)["status"].get("phase") == "paused",
          "phase paused once the pods are gone")
    # Pausing is not a config change: the pod template (and its checksum) stay as they were.
    assert _template_checksum(cluster.get("deployment", namespace, name)) == _template_checksum(deployment)

    control_plane.kubectl("patch", "mdep", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"paused":false}}')
    _wait(cluster, namespace, lambda: cluster.get("deployment", namespace, name)["spec"]["replicas"] == 1,
          "the Deployment scaled back to 1")
    if control_plane.fake_pods:
        _wait_cr_ready(cluster, namespace, name)

    # --- delete: the garbage collector removes everything the CR owned ---------------------------------
    control_plane.kubectl("delete", "mdep", name, "-n", namespace)
    _wait(cluster, namespace,
          lambda: all(cluster.owned(kind, namespace, name) == [] for kind in ("configmap", "deployment", "service")),
          "garbage collection of the owned objects")


def test_configmap_ref_missing_then_created_then_edited(
    control_plane, cluster: Cluster, module_namespace: str, kubectl_operator: OperatorProcess
):
    namespace, name, cm_name = module_namespace, f"cmref-{short_id()}", f"pipeline-{short_id()}"
    body = local_model_cr(name, node_selector=control_plane.node_selector)
    body["spec"]["config"] = {"configMapRef": {"name": cm_name, "key": "pipeline.yaml"}}
    _apply(control_plane, namespace, body)

    cr = _wait(cluster, namespace,
               lambda: (c := cluster.cr(namespace, name)) and condition(c, "Degraded").get("status") == "True" and c,
               "Degraded=True for the missing ConfigMap")
    degraded = condition(cr, "Degraded")
    assert degraded["reason"] == "ConfigMapNotFound"
    assert "spec.config.configMapRef" in degraded["message"] and cm_name in degraded["message"], degraded
    assert cluster.owned("deployment", namespace, name) == []

    def write_configmap(scale: float) -> None:
        configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": cm_name},
                     "data": {"pipeline.yaml": yaml.safe_dump(pipeline_config(scale))}}
        _apply(control_plane, namespace, configmap)  # (the YAML text is a JSON string here: no ambiguity)

    write_configmap(1.0)
    # Nothing about the CR changed: the periodic resync notices the ConfigMap and deploys.
    deployment = _wait(cluster, namespace, lambda: cluster.get("deployment", namespace, name),
                       "the Deployment once the ConfigMap exists")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": cm_name, "items": [{"key": "pipeline.yaml", "path": "pipeline.yaml"}]}.items() <= next(
        v["configMap"] for v in volumes if v["name"] == "pipeline-config"
    ).items()
    # The user's ConfigMap is referenced, never taken over or owned by the operator.
    assert controller_ref(cluster.get("configmap", namespace, cm_name)) is None
    assert cluster.get("configmap", namespace, f"{name}-pipeline") is None
    if control_plane.fake_pods:
        _wait_cr_ready(cluster, namespace, name)
    checksum = _template_checksum(deployment)

    write_configmap(4.0)
    _wait(cluster, namespace,
          lambda: _template_checksum(cluster.get("deployment", namespace, name)) != checksum,
          "a rollout after the referenced ConfigMap was edited")
    if control_plane.fake_pods:
        cr = _wait(cluster, namespace,
                   lambda: (c := cluster.cr(namespace, name)) and cr_ready(c)
                   and c["status"]["configChecksum"] != checksum and c,
                   "Ready=True on the edited ConfigMap")
        assert condition(cr, "Degraded")["status"] == "False"


def _differences(expected: Any, actual: Any, path: str = "spec") -> list[str]:
    """Where `actual` (what the API server stored) lost or changed something of `expected` (the file as
    PyYAML, i.e. the runtime, reads it). Extra keys in `actual` (schema defaults) are fine."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        problems = []
        for key, value in expected.items():
            if key not in actual:
                problems.append(f"{path}.{key}: missing (stored keys: {sorted(map(str, actual))})")
            else:
                problems += _differences(value, actual[key], f"{path}.{key}")
        return problems
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [p for i, (e, a) in enumerate(zip(expected, actual)) for p in _differences(e, a, f"{path}[{i}]")]
    return [] if expected == actual else [f"{path}: {expected!r} became {actual!r}"]


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_is_stored_as_written(control_plane, module_namespace: str, example: str):
    """`kubectl apply -f examples/...` as the README says: the API server accepts it (schema + CEL) and
    stores the spec exactly as written. kubectl reads YAML 1.1, where unquoted y/n/yes/no/on/off are
    booleans, so e.g. an output variable named `y` would silently become `true`."""
    documents = [d for d in yaml.safe_load_all((EXAMPLES / example).read_text()) if d]
    deployments = [d for d in documents if d.get("kind") == "ModelDeployment"]
    assert deployments, f"{example} has no ModelDeployment"
    text = (EXAMPLES / example).read_text().replace("namespace: default", f"namespace: {module_namespace}")
    result = control_plane.kubectl("create", "--dry-run=server", "-o", "json", "-n", module_namespace,
                                   "-f", "-", input=text, check=False)
    assert result.returncode == 0, f"the API server refused {example}: {result.stderr}"
    stored = json.loads(result.stdout)
    stored_items = stored["items"] if stored.get("kind") == "List" else [stored]
    stored_deployments = [o for o in stored_items if o.get("kind") == "ModelDeployment"]
    for written, kept in zip(deployments, stored_deployments):
        problems = _differences(written["spec"], kept["spec"])
        assert problems == [], f"{example}: kubectl/the API server changed the spec: {problems}"
