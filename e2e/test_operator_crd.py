"""The ModelDeployment CRD on the real API server, and how the operator reports specs it cannot act on.

- The CRD from crds/ applies cleanly and is served (names, status subresource, printer columns).
- The API server itself refuses invalid specs (OpenAPI schema + CEL rules) with a message that names the
  field and the fix.
- Specs the schema accepts but the operator cannot deploy end up in the status (Degraded=True with a
  reason and a clear message), never in a crash loop; fixing the spec (or the world) recovers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from operator_fixtures import (  # noqa: F401 - fixtures are used by name
    CRD_NAME,
    CRD_PATH,
    Cluster,
    OperatorFactory,
    OperatorProcess,
    cluster,
    condition,
    cr_ready,
    crd,
    local_model_cr,
    mlflow_model_cr,
    mlflow_models,
    module_namespace,
    module_operator_factory,
    short_id,
    wait_for,
)

pytestmark = pytest.mark.e2e

STATUS_TIMEOUT = 45  # operator reaction (seconds); generous for a loaded 2-core CI machine


@pytest.fixture(scope="module")
def crd_operator(module_operator_factory: OperatorFactory, module_namespace: str, mlflow_server) -> OperatorProcess:
    # A short resync: the ModelNotFound test relies on the safety net re-resolving the model.
    return module_operator_factory(module_namespace, resync_seconds=3, name="crd-operator",
                                   mlflow_uri=mlflow_server.uri)


def _status_wait(cluster: Cluster, namespace: str, name: str, check, what: str, timeout: float = STATUS_TIMEOUT):
    return wait_for(
        lambda: check(cluster.cr(namespace, name)),
        timeout,
        f"{what} on ModelDeployment {namespace}/{name}",
        diagnostics=lambda: cluster.describe(namespace),
    )


def _deployed(cluster: Cluster, control_plane, cr: dict | None) -> dict | None:
    """The CR once its current generation is deployed: Ready where kwok fakes pods; elsewhere (a real
    cluster, where the runtime cannot reach PVs) its Deployment exists and nothing is Degraded."""
    if not cr or (cr.get("status") or {}).get("observedGeneration") != cr["metadata"]["generation"]:
        return None
    if control_plane.fake_pods:
        return cr if cr_ready(cr) else None
    healthy = condition(cr, "Degraded").get("status") == "False" and \
        condition(cr, "Progressing").get("reason") != "MlflowUnavailable"
    return cr if healthy and cluster.get("deployment", cr["metadata"]["namespace"], cr["metadata"]["name"]) else None


# ------------------------------------------------------------------------------------ CRD is served
def test_crd_applies_cleanly_and_is_served(control_plane, cluster: Cluster, crd, module_namespace):
    obj = cluster._plain(cluster.extensions.read_custom_resource_definition(CRD_NAME))
    conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    # A structural schema: the API server would report NonStructuralSchema otherwise.
    assert "NonStructuralSchema" not in conditions
    names = obj["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("ModelDeployment", "modeldeployments", ["mdep"])
    (version,) = obj["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert "status" in version["subresources"]

    # Re-applying the same file is a no-op (no drift between what is in git and what is served).
    result = control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    assert "serverside-applied" in result.stdout

    # The short name and printer columns work through kubectl.
    name = f"columns-{short_id()}"
    control_plane.kubectl("apply", "-n", module_namespace, "-f", "-", input=json.dumps(local_model_cr(name)))
    table = control_plane.kubectl("get", "mdep", name, "-n", module_namespace).stdout
    header = table.splitlines()[0].split()
    assert header[:6] == ["NAME", "MODEL", "VERSION", "READY", "PHASE", "AGE"], table
    control_plane.kubectl("delete", "mdep", name, "-n", module_namespace)


# ----------------------------------------------------------------------- rejected by the API server
def _mlflow(**source) -> dict:
    return {"model": {"mlflow": {"name": "toy", **source}}}


INLINE = {"inline": {"deployment": {"type": "continuous"}}}
INVALID_SPECS = {
    "mlflow-and-local": (
        {"model": {"mlflow": {"name": "toy", "version": "1"}, "local": {"path": "/models/toy"}}, "config": INLINE},
        ["spec.model", "set exactly one of model.mlflow or model.local"],
    ),
    "neither-mlflow-nor-local": ({"model": {}}, ["spec.model", "set exactly one of model.mlflow or model.local"]),
    "version-and-alias": (
        _mlflow(version="1", alias="champion"),
        ["spec.model.mlflow", "set either version or alias, not both"],
    ),
    "version-not-a-number": (_mlflow(version="abc"), ["spec.model.mlflow.version", '"abc"', "^[0-9]+$"]),
    "local-without-config": (
        {"model": {"local": {"path": "/models/toy"}}},
        ["spec", "a local model has no pv_mappings.yaml in MLflow: set config.inline or config.configMapRef"],
    ),
    "relative-local-path": (
        {"model": {"local": {"path": "models/toy"}}, "config": INLINE},
        ["spec.model.local.path", "^/"],
    ),
    "inline-and-configmap": (
        {"model": {"mlflow": {"name": "toy"}}, "config": {**INLINE, "configMapRef": {"name": "cm"}}},
        ["spec.config", "set at most one of config.inline or config.configMapRef"],
    ),
    "too-many-replicas": ({**_mlflow(version="1"), "replicas": 11}, ["spec.replicas", "less than or equal to 10"]),
    "unknown-pull-policy": (
        {**_mlflow(version="1"), "imagePullPolicy": "Sometimes"},
        ["spec.imagePullPolicy", "Unsupported value", "Sometimes"],
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_SPECS))
def test_api_server_rejects_invalid_spec(control_plane, cluster: Cluster, module_namespace, case):
    spec, expected = INVALID_SPECS[case]
    name = f"invalid-{case}"
    body = {"apiVersion": "deploy.lume.slac.stanford.edu/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": module_namespace}, "spec": spec}
    result = control_plane.kubectl("create", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0, f"the API server accepted {case}: {result.stdout}"
    message = result.stderr
    assert f'The ModelDeployment "{name}" is invalid' in message, message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from the API server's message: {message}"
    assert cluster.cr(module_namespace, name) is None


def test_api_server_rejects_long_name(control_plane, module_namespace):
    # Every rendered object carries the CR name as a label value, so the CRD caps it at 63.
    body = local_model_cr("x" * 64)
    body["metadata"]["namespace"] = module_namespace
    result = control_plane.kubectl("create", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0
    assert "metadata.name must be at most 63 characters" in result.stderr, result.stderr


# --------------------------------------------------------- accepted by the schema, refused by the operator
def test_spec_valid_for_schema_but_not_operator_is_degraded(
    control_plane, cluster: Cluster, module_namespace: str, crd_operator: OperatorProcess
):
    """A PVC-backed local model at /model has no parent directory to mount the volume at: the CRD cannot
    express that rule, the operator reports it (InvalidSpec) and deploys nothing until the spec changes."""
    namespace, name = module_namespace, f"pvc-root-{short_id()}"
    body = local_model_cr(name, node_selector=control_plane.node_selector)
    body["spec"]["model"]["local"] = {"path": "/model", "pvc": "models"}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))

    cr = _status_wait(
        cluster, namespace, name,
        lambda cr: condition(cr, "Degraded").get("status") == "True" and cr,
        "Degraded=True",
    )
    degraded, ready = condition(cr, "Degraded"), condition(cr, "Ready")
    assert degraded["reason"] == "InvalidSpec"
    assert "spec.model.local" in degraded["message"] and "parent directory" in degraded["message"], degraded
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert cr["status"]["phase"] == "failed"
    assert cr["status"]["observedGeneration"] == cr["metadata"]["generation"]
    assert cr["status"]["message"] == degraded["message"]
    # Nothing deployed, and no retry storm: kopf never logged a retry for it.
    assert cluster.owned("deployment", namespace, name) == []
    retries = [line for line in crd_operator.log_text().splitlines() if name in line and "retry" in line.lower()]
    assert retries == [], retries

    # Fix the spec: the operator picks it up from the update event and deploys.
    control_plane.kubectl(
        "patch", "mdep", name, "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"model": {"local": {"path": "/models/model"}}}}),
    )
    cr = _status_wait(
        cluster, namespace, name,
        lambda cr: condition(cr, "Degraded").get("status") == "False"
        and cr["status"].get("observedGeneration") == cr["metadata"]["generation"] and cr,
        "Degraded=False after the fix",
    )
    assert wait_for(lambda: cluster.get("deployment", namespace, name), 20, "the Deployment after the fix")


def test_model_not_found_then_registered(
    control_plane, cluster: Cluster, module_namespace: str, crd_operator: OperatorProcess, mlflow_models
):
    namespace, name = module_namespace, f"missing-{short_id()}"
    model_name = f"e2e-missing-{short_id()}"
    body = mlflow_model_cr(name, model_name, node_selector=control_plane.node_selector, version="1")
    cluster.create_cr(namespace, body)
    cr = _status_wait(
        cluster, namespace, name, lambda cr: condition(cr, "Degraded").get("status") == "True" and cr,
        "Degraded=True (ModelNotFound)",
    )
    degraded = condition(cr, "Degraded")
    assert degraded["reason"] == "ModelNotFound"
    assert model_name in degraded["message"] and "version 1" in degraded["message"], degraded
    assert "spec.model.mlflow" in degraded["message"], degraded  # names what to fix
    assert cluster.owned("deployment", namespace, name) == []

    # Register it: the periodic resync (3 s here) re-resolves and deploys without any spec change.
    mlflow_models.register(model_name, versions=1)
    cr = _status_wait(cluster, namespace, name, lambda cr: _deployed(cluster, control_plane, cr), "the deployment",
                      timeout=60)
    assert cr["status"]["resolvedVersion"] == "1"
    assert cr["status"]["modelUri"] == f"models:/{model_name}/1"
    assert condition(cr, "Degraded")["status"] == "False"


# ----------------------------------------------------------------------- MLflow unreachable, then back
class TcpForwarder:
    """A plain TCP relay from a local port to the real MLflow server. Closed: connection refused, as when
    MLflow is down; open: MLflow answers. Not a mock: every byte comes from the real server."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()

    def open(self) -> None:
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._listener.settimeout(0.5)
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()


@pytest.fixture
def mlflow_forwarder(mlflow_server) -> Iterator[TcpForwarder]:
    forwarder = TcpForwarder(mlflow_server.port)
    yield forwarder
    forwarder.close()


def test_mlflow_unavailable_is_retried_until_it_answers(
    control_plane, cluster: Cluster, module_namespace: str, crd_operator: OperatorProcess, mlflow_models,
    mlflow_forwarder: TcpForwarder,
):
    namespace, name = module_namespace, f"offline-{short_id()}"
    model_name = f"e2e-offline-{short_id()}"
    mlflow_models.register(model_name, versions=2)
    mlflow_models.client.set_registered_model_alias(model_name, "champion", "2")
    # The port is bound but not listening: connections are refused, as with a crashed MLflow.
    body = mlflow_model_cr(name, model_name, node_selector=control_plane.node_selector, alias="champion",
                           trackingUri=f"http://127.0.0.1:{mlflow_forwarder.port}")
    cluster.create_cr(namespace, body)

    cr = _status_wait(
        cluster, namespace, name,
        lambda cr: condition(cr, "Progressing").get("reason") == "MlflowUnavailable" and cr,
        "Progressing reason MlflowUnavailable",
    )
    progressing = condition(cr, "Progressing")
    assert progressing["status"] == "True"
    assert "MLflow unavailable" in progressing["message"] and "retrying" in progressing["message"], progressing
    assert condition(cr, "Degraded").get("status") == "False"  # transient, not a failure
    assert condition(cr, "Ready").get("status") == "False"
    assert cluster.owned("deployment", namespace, name) == []
    # The kopf handler is retried with backoff (TemporaryError), not given up.
    wait_for(lambda: "retry" in crd_operator.log_text().lower() or None, 20, "a kopf retry in the operator log")

    mlflow_forwarder.open()
    started = time.monotonic()
    cr = _status_wait(cluster, namespace, name, lambda cr: _deployed(cluster, control_plane, cr),
                      "the deployment once MLflow answers")
    assert cr["status"]["resolvedVersion"] == "2"  # the alias, resolved
    assert condition(cr, "Progressing")["reason"] != "MlflowUnavailable"
    # Backoff is capped at 2 s in these tests: recovery must not wait for a long timer.
    assert time.monotonic() - started < STATUS_TIMEOUT
    deployment = cluster.get("deployment", namespace, name)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == ["-n", model_name, "-v", "2"], args
