"""MLflow-driven deployments end to end: registered-model tags in a real MLflow server -> ModelDeployment
-> Deployment -> pods Running (kwok) -> Ready -> deployment_* tags written back; new versions and alias
moves roll the Deployment; deployment_terminate / removing the tag tears everything down.

The operator's MLflow poller runs every second here. These tests need Ready pods, so they only run where
kwok fakes them (on kind the runtime image would really start and fail to reach the PVs).
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from model_deploy.operator.mlflow_sync import deployment_name_for_model
from operator_fixtures import (  # noqa: F401 - fixtures are used by name
    ANNOTATION_CHECKSUM,
    ANNOTATION_REGISTERED_MODEL,
    LABEL_MANAGED_BY,
    Cluster,
    MlflowModels,
    OperatorFactory,
    OperatorProcess,
    PhaseRecorder,
    cluster,
    controller_ref,
    cr_ready,
    crd,
    mlflow_models,
    module_namespace,
    module_operator_factory,
    needs_fake_pods,
    short_id,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.mlflow, needs_fake_pods]

TIMEOUT = 60
DNS_1123_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


@pytest.fixture(scope="module")
def poller_operator(module_operator_factory: OperatorFactory, module_namespace: str, mlflow_server) -> OperatorProcess:
    # No periodic resync within these tests (300 s): every step must come from the poller and the
    # kopf event handlers (CR changes, Deployment status changes), not from the safety net.
    return module_operator_factory(module_namespace, poll=True, poll_interval=1.0, mlflow_uri=mlflow_server.uri,
                                   resync_seconds=300, name="mlflow-operator")


def _wait(cluster: Cluster, namespace: str, check, what: str, timeout: float = TIMEOUT):
    return wait_for(check, timeout, what, diagnostics=lambda: cluster.describe(namespace))


def _wait_tags(models: MlflowModels, model_name: str, expected: dict[str, str], cluster: Cluster, namespace: str,
               timeout: float = TIMEOUT) -> dict[str, str]:
    def check() -> dict[str, str] | None:
        tags = models.tags(model_name)
        return tags if all(tags.get(key) == value for key, value in expected.items()) else None

    return wait_for(
        check, timeout, f"MLflow tags {expected} on {model_name!r}",
        diagnostics=lambda: f"tags now: {models.tags(model_name)}\n{cluster.describe(namespace)}",
    )


def _parse_utc(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0), f"deployment_timestamp {text!r} is not UTC"
    return parsed


def _checksum(deployment: dict[str, Any]) -> str:
    return deployment["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CHECKSUM]


def _active_replicasets(cluster: Cluster, namespace: str, cr_name: str) -> list[dict[str, Any]]:
    return [rs for rs in cluster.list("replicaset", namespace, f"app.kubernetes.io/instance={cr_name}")
            if (rs["spec"].get("replicas") or 0) > 0]


def _active_replicaset_name(cluster: Cluster, namespace: str, cr_name: str) -> str:
    (active,) = _active_replicasets(cluster, namespace, cr_name)
    return active["metadata"]["name"]


def _rolled_to(cluster: Cluster, namespace: str, cr_name: str, version: str, old_checksum: str,
               old_replicaset: str) -> dict[str, Any]:
    """Wait for the CR to ask for `version`, the Deployment to roll (new checksum, another ReplicaSet
    serving: a new one, or the old one of that version scaled back up) and the CR to be Ready on it;
    returns the Deployment."""
    _wait(cluster, namespace,
          lambda: cluster.cr(namespace, cr_name)["spec"]["model"]["mlflow"].get("version") == version,
          f"the poller to update the CR to version {version}")
    deployment = _wait(
        cluster, namespace,
        lambda: (d := cluster.get("deployment", namespace, cr_name)) and _checksum(d) != old_checksum and d,
        f"the pod template checksum to change for version {version}",
    )
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[2:4] == ["-v", version], args
    cr = _wait(cluster, namespace,
               lambda: (c := cluster.cr(namespace, cr_name)) and cr_ready(c)
               and c["status"].get("resolvedVersion") == version and c,
               f"Ready=True on version {version}")
    assert cr["status"]["configChecksum"] == _checksum(deployment)
    (active,) = _wait(cluster, namespace, lambda: _active_replicasets(cluster, namespace, cr_name),
                      "one serving ReplicaSet")
    assert active["metadata"]["name"] != old_replicaset
    assert _checksum(active) == _checksum(deployment)
    return deployment


def test_tagged_model_is_deployed_rolled_and_terminated(
    control_plane, cluster: Cluster, module_namespace: str, poller_operator: OperatorProcess,
    mlflow_models: MlflowModels, request,
):
    namespace = module_namespace
    # Upper case and '_' are not allowed in Kubernetes names: the CR name is derived.
    model_name = f"E2E_Flow Model-{short_id()}"
    cr_name = deployment_name_for_model(model_name)
    assert cr_name != model_name
    mlflow_models.register(model_name, versions=1)
    phases = PhaseRecorder(cluster, namespace, cr_name).start()
    request.addfinalizer(phases.stop)
    started = datetime.now(timezone.utc).replace(microsecond=0)
    mlflow_models.client.set_registered_model_tag(model_name, "deployment_type", "prod")

    # --- tag -> ModelDeployment -> Deployment -> Running pods -> Ready --------------------------------
    cr = _wait(cluster, namespace, lambda: cluster.cr(namespace, cr_name), f"ModelDeployment {cr_name}")
    assert cr["metadata"]["labels"][LABEL_MANAGED_BY] == "mlflow"
    assert cr["metadata"]["annotations"][ANNOTATION_REGISTERED_MODEL] == model_name
    assert cr["spec"]["model"]["mlflow"] == {"name": model_name, "version": "1"}
    assert re.match(DNS_1123_LABEL, cr_name) and len(cr_name) <= 63, cr_name

    deployment = _wait(cluster, namespace, lambda: cluster.get("deployment", namespace, cr_name), "the Deployment")
    assert controller_ref(deployment)["uid"] == cr["metadata"]["uid"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:4] == ["-n", model_name, "-v", "1"]
    # No config in the CR: the runtime reads the model's own pv_mappings.yaml from MLflow (no -c).
    assert "-c" not in container["args"]
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    assert env.get("MLFLOW_TRACKING_URI") == poller_operator.mlflow_uri

    _wait(cluster, namespace,
          lambda: [p for p in cluster.list("pod", namespace, f"app.kubernetes.io/instance={cr_name}")
                   if p["status"].get("phase") == "Running" and p["spec"].get("nodeName") == control_plane.node_name],
          "a Running runtime pod on the kwok node")
    cr = _wait(cluster, namespace, lambda: (c := cluster.cr(namespace, cr_name)) and cr_ready(c) and c,
               "Ready=True")
    assert cr["status"]["phase"] == "running"
    assert cr["status"]["resolvedVersion"] == "1"
    # First rollout: deploying, then running (pending may come first, before the Deployment exists). The
    # recorder's watch may deliver the last event a moment after the GET above saw it.
    wait_for(lambda: phases.since("deploying")[:2] == ["deploying", "running"], 10,
             "the phases deploying -> running", diagnostics=lambda: f"phases seen: {phases.phases}")

    tags = _wait_tags(mlflow_models, model_name, {
        "deployment_status": "running", "deployment_name": cr_name, "deployment_namespace": namespace,
        "deployment_version": "1",
    }, cluster, namespace)
    first_timestamp = _parse_utc(tags["deployment_timestamp"])
    assert started - timedelta(seconds=1) <= first_timestamp <= datetime.now(timezone.utc) + timedelta(seconds=1)
    assert tags["deployment_type"] == "prod"  # the user's tag is left alone

    # --- a new version (no alias set: the latest version wins) -> rollout -----------------------------
    old_checksum, old_rs = _checksum(deployment), _active_replicaset_name(cluster, namespace, cr_name)
    seen_before = len(phases.phases)
    assert mlflow_models.add_version(model_name) == "2"
    deployment = _rolled_to(cluster, namespace, cr_name, "2", old_checksum, old_rs)
    # A rollout while a version was running is an update, not a fresh deployment.
    wait_for(lambda: phases.since("updating", seen_before)[:2] == ["updating", "running"], 10,
             "the phases updating -> running", diagnostics=lambda: f"phases seen: {phases.phases}")
    tags = _wait_tags(mlflow_models, model_name, {"deployment_status": "running", "deployment_version": "2"},
                      cluster, namespace)
    second_timestamp = _parse_utc(tags["deployment_timestamp"])
    assert second_timestamp >= first_timestamp

    # --- the champion alias moves (back to version 1) -> rollout --------------------------------------
    # The version-1 ReplicaSet still exists (scaled to 0): the Deployment controller scales it back up.
    old_checksum, old_rs = _checksum(deployment), _active_replicaset_name(cluster, namespace, cr_name)
    mlflow_models.client.set_registered_model_alias(model_name, "champion", "1")
    _rolled_to(cluster, namespace, cr_name, "1", old_checksum, old_rs)
    tags = _wait_tags(mlflow_models, model_name, {"deployment_status": "running", "deployment_version": "1"},
                      cluster, namespace)
    assert _parse_utc(tags["deployment_timestamp"]) >= second_timestamp
    # Exactly one Deployment throughout: rollouts update it in place.
    assert len(cluster.owned("deployment", namespace, cr_name)) == 1

    # --- deployment_terminate=true -> CR and everything it owned are gone, tag `terminated` -----------
    mlflow_models.client.set_registered_model_tag(model_name, "deployment_terminate", "true")
    _wait(cluster, namespace, lambda: cluster.cr(namespace, cr_name) is None, "the CR to be deleted")
    _wait(cluster, namespace,
          lambda: all(cluster.owned(kind, namespace, cr_name) == [] for kind in ("deployment", "service", "configmap"))
          and cluster.list("pod", namespace, f"app.kubernetes.io/instance={cr_name}") == [],
          "garbage collection of the Deployment, Service, ConfigMap and pods")
    tags = _wait_tags(mlflow_models, model_name, {"deployment_status": "terminated"}, cluster, namespace)
    assert "deployment_terminate" in tags.get("deployment_message", ""), tags
    assert _parse_utc(tags["deployment_timestamp"]) >= second_timestamp
    # It stays terminated: the poller does not re-create it while the terminate tag is set.
    time.sleep(2 * poller_operator.poll_interval + 0.5)  # two polls: a negative check needs a window
    assert cluster.cr(namespace, cr_name) is None


def test_invalid_type_and_removed_tag(
    control_plane, cluster: Cluster, module_namespace: str, poller_operator: OperatorProcess,
    mlflow_models: MlflowModels,
):
    namespace = module_namespace
    model_name = f"e2e-tagged-{short_id()}"
    cr_name = deployment_name_for_model(model_name)
    mlflow_models.register(model_name, versions=1)

    # A typo in deployment_type: nothing is deployed, the model says why.
    mlflow_models.client.set_registered_model_tag(model_name, "deployment_type", "prdo")
    tags = _wait_tags(mlflow_models, model_name, {"deployment_status": "failed"}, cluster, namespace)
    assert "'prdo'" in tags["deployment_message"] and "prod" in tags["deployment_message"], tags
    assert cluster.cr(namespace, cr_name) is None

    # Fixed: deployed.
    mlflow_models.client.set_registered_model_tag(model_name, "deployment_type", "prod")
    _wait(cluster, namespace, lambda: cr_ready(cluster.cr(namespace, cr_name)), "Ready=True after fixing the tag")
    _wait_tags(mlflow_models, model_name, {"deployment_status": "running", "deployment_version": "1"},
               cluster, namespace)

    # The opt-in tag removed: torn down and reported as terminated.
    mlflow_models.client.delete_registered_model_tag(model_name, "deployment_type")
    _wait(cluster, namespace, lambda: cluster.cr(namespace, cr_name) is None, "the CR to be deleted")
    tags = _wait_tags(mlflow_models, model_name, {"deployment_status": "terminated"}, cluster, namespace)
    assert "deployment_type tag was removed" in tags["deployment_message"], tags
    _wait(cluster, namespace, lambda: cluster.owned("deployment", namespace, cr_name) == [],
          "garbage collection of the Deployment")


PHASE_ORDER = {"pending": 0, "deploying": 1, "running": 2}


def test_tags_of_new_deployments_never_go_backwards(
    cluster: Cluster, module_namespace: str, poller_operator: OperatorProcess, mlflow_models: MlflowModels,
    request,
):
    """deployment_status of a fresh deployment moves pending -> deploying -> running and never back while
    the CR stays Ready: a consumer polling MLflow must not see `running` and then `pending`/`updating`.

    The poller and the status path both write tags; the poller's writes for a CR it has just created are
    computed from that CR without a status, so they can land after the status path wrote `running`. Many
    deployments at once make that interleaving likely (not certain) in one run."""
    namespace, count = module_namespace, 8
    prefix = f"e2e-order-{short_id()}-"
    names = [f"{prefix}{i}" for i in range(count)]
    for name in names:
        mlflow_models.register(name, versions=1)
    recorders = {name: PhaseRecorder(cluster, namespace, deployment_name_for_model(name)).start() for name in names}
    for recorder in recorders.values():
        request.addfinalizer(recorder.stop)
    for name in names:
        mlflow_models.client.set_registered_model_tag(name, "deployment_type", "prod")

    history: dict[str, list[str]] = {name: [] for name in names}

    def sample() -> None:
        for model in mlflow_models.client.search_registered_models(filter_string=f"name LIKE '{prefix}%'"):
            status = (model.tags or {}).get("deployment_status")
            if status and (not history[model.name] or history[model.name][-1] != status):
                history[model.name].append(status)

    # Sample until every one has been running for three poll intervals (long enough for a stale write).
    deadline = time.monotonic() + TIMEOUT
    running_since: float | None = None
    while time.monotonic() < deadline:
        sample()
        if all(h and h[-1] == "running" for h in history.values()):
            running_since = running_since or time.monotonic()
            if time.monotonic() - running_since > 3 * poller_operator.poll_interval:
                break
        else:
            running_since = None
        time.sleep(0.05)
    assert all(h and h[-1] == "running" for h in history.values()), history
    assert all(cr_ready(cluster.cr(namespace, deployment_name_for_model(name))) for name in names)

    backwards = {
        name: seen for name, seen in history.items()
        if any(PHASE_ORDER.get(b, -1) < PHASE_ORDER.get(a, -1) for a, b in zip(seen, seen[1:]))
        or set(seen) - set(PHASE_ORDER)
    }
    cr_phases = {name: recorders[name].phases for name in names}
    # The CRs themselves: a fresh deployment goes forward to running and is never an update. (Whether the
    # short `deploying` shows up is not checked here; going backwards is.)
    wrong_cr_phases = {
        name: seen for name, seen in cr_phases.items()
        if not seen or seen[-1] != "running" or set(seen) - set(PHASE_ORDER)
        or any(PHASE_ORDER[b] < PHASE_ORDER[a] for a, b in zip(seen, seen[1:]) if {a, b} <= set(PHASE_ORDER))
    }
    assert backwards == {}, (f"deployment_status went backwards (or through a wrong phase): {backwards}; "
                             f"the CRs' own phases: {cr_phases}")
    assert wrong_cr_phases == {}, f"CR phases of fresh deployments: {wrong_cr_phases}"
    # Two writers of the same tag at once also make MLflow's sqlite store refuse one of them.
    conflicts = [line for line in poller_operator.log_text().splitlines() if "UNIQUE constraint failed" in line]
    assert conflicts == [], conflicts[:3]
