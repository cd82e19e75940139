"""Faults across the stack, with real processes: MLflow killed mid-poll, kube-apiserver restarted, a pipeline
config the runtime would reject, a model version that does not exist, a model whose artifacts are gone.

Each case checks: the operator does not crash (same process, /healthz answers), the problem is reported
clearly (CR status condition naming the field/fix, and MLflow tags for MLflow-managed models), it recovers
once the fault clears, and no Kubernetes object is duplicated or orphaned.

Not repeated here (covered elsewhere):
  * MLflow unreachable before the first deploy, model registered late (pinned version 1): e2e/test_operator_crd.py
  * operator restart / main flows: e2e/test_operator_*.py
  * NaN/inf inputs at run time (skipped, counted, /readyz warning, recovery): tests/runtime/test_pipeline.py
    ::test_nan_input_is_counted_skipped_and_the_loop_recovers
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model_deploy.operator.mlflow_sync import deployment_name_for_model
from operator_fixtures import (  # noqa: F401 - fixtures are used by name
    LABEL_DEPLOYMENT,
    Cluster,
    MlflowModels,
    OperatorFactory,
    OperatorProcess,
    cluster,
    condition,
    controller_ref,
    cr_ready,
    crd,
    local_model_cr,
    mlflow_model_cr,
    module_namespace,
    needs_fake_pods,
    pipeline_config,
    short_id,
    wait_for,
)
from tests.fixtures.mlflow_server import MlflowServer

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60  # operator reaction (s); generous for a loaded 2-core CI machine
OWNED_KINDS = ("deployment", "service", "configmap")
# Kubernetes' garbage collector is asynchronous: for a CR deleted just before an API server restart, its
# objects went 29 s after the restart here (a 2-core machine; more under CI load).
GC_TIMEOUT = 120


# ------------------------------------------------------------------------------------------ helpers
def deploy_until_running(cluster: Cluster, namespace: str, registry: MlflowModels, operator: OperatorProcess,
                         model: str) -> str:
    """Register `model` (one version), tag it prod, wait for its CR Ready and the MLflow tag running;
    returns the CR name."""
    cr_name = deployment_name_for_model(model)
    registry.register(model, versions=1)
    registry.client.set_registered_model_tag(model, "deployment_type", "prod")
    wait_cr(cluster, namespace, cr_name, cr_ready, "Ready=True", operator)
    wait_tags(registry, model, {"deployment_status": "running", "deployment_version": "1"})
    return cr_name


def healthz(operator: OperatorProcess) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/healthz", timeout=5) as response:
        return response.status == 200


def assert_operator_survived(operator: OperatorProcess) -> None:
    """No crash, no crash loop: the very first process still runs and answers its health check."""
    assert operator.alive, f"the operator exited:\n{operator.log_tail()}"
    assert operator.starts == 1, "the operator was restarted"
    assert healthz(operator)


def assert_no_duplicates_or_orphans(cluster: Cluster, namespace: str, gc_timeout: float = GC_TIMEOUT) -> None:
    """Every rendered object is controlled by a live CR with the same uid, and no CR owns two of a kind.

    An object whose owner CR is gone (an earlier test's CR, deleted at its cleanup) is Kubernetes' garbage
    collector's to delete, asynchronously and later still around an API server restart; so such objects are
    waited for, and fail the test only if they outlive `gc_timeout`."""
    deadline = time.monotonic() + gc_timeout
    while True:
        crs = {cr["metadata"]["name"]: cr["metadata"]["uid"] for cr in cluster.list("modeldeployment", namespace)}
        owner_gone: list[str] = []
        for kind in OWNED_KINDS:
            per_cr: dict[str, int] = {}
            for obj in cluster.list(kind, namespace, LABEL_DEPLOYMENT):
                ref = controller_ref(obj)
                where = f"{kind} {namespace}/{obj['metadata']['name']}"
                assert ref is not None, f"{where} has no controller owner reference"
                if crs.get(ref["name"]) != ref["uid"]:
                    owner_gone.append(f"{where} (owner {ref['name']} uid {ref['uid']} is gone)")
                    continue
                per_cr[ref["name"]] = per_cr.get(ref["name"], 0) + 1
            duplicated = {name: count for name, count in per_cr.items() if count > 1}
            assert not duplicated, f"duplicated {kind}s: {duplicated}"
        if not owner_gone:
            return
        assert time.monotonic() < deadline, (
            f"orphaned for more than {gc_timeout:.0f}s (the garbage collector never deleted them): {owner_gone}")
        time.sleep(1)


def wait_cr(cluster: Cluster, namespace: str, name: str, check, what: str, operator: OperatorProcess,
            timeout: float = TIMEOUT) -> dict[str, Any]:
    return wait_for(
        lambda: (cr := cluster.cr(namespace, name)) and check(cr) and cr,
        timeout, f"{what} on ModelDeployment {namespace}/{name}",
        diagnostics=lambda: f"{cluster.describe(namespace)}\n--- operator log:\n{operator.log_tail(60)}",
    )


def wait_tags(registry: MlflowModels, model: str, expected: dict[str, str], timeout: float = TIMEOUT,
              message_contains: str = "") -> dict[str, str]:
    """Tags equal to `expected`, and a deployment_message containing `message_contains`. Wait for both: the
    status tag can settle before the message does (the status and the message are written from one
    snapshot, but the next snapshot may keep the status and change the message)."""
    def check() -> dict[str, str] | None:
        tags = registry.tags(model)
        settled = all(tags.get(key) == value for key, value in expected.items())
        return tags if settled and message_contains in tags.get("deployment_message", "") else None

    what = f"MLflow tags {expected}" + (f" and a message with {message_contains!r}" if message_contains else "")
    return wait_for(check, timeout, f"{what} on {model!r}",
                    diagnostics=lambda: f"tags now: {registry.tags(model)}")


def degraded_with(reason: str):
    return lambda cr: condition(cr, "Degraded").get("status") == "True" and condition(cr, "Degraded").get(
        "reason") == reason


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def private_mlflow(tmp_path_factory) -> Iterator[MlflowServer]:
    """This module kills and restarts MLflow: its own server, never the session's."""
    server = MlflowServer(tmp_path_factory.mktemp("faults-mlflow")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def faults_operator(control_plane, crd, module_namespace, private_mlflow, tmp_path_factory) -> Iterator[OperatorProcess]:
    factory = OperatorFactory(control_plane.kubeconfig, tmp_path_factory.mktemp("faults-operator"))
    operator = factory(
        module_namespace, mlflow_uri=private_mlflow.uri, poll=True, poll_interval=1.0, resync_seconds=3,
        name="faults-operator",
        # Short watch timeouts: after an API server restart a silent watch is re-established within seconds.
        extra_env={"MDO_WATCH_SERVER_TIMEOUT_SECONDS": "20", "MDO_WATCH_CLIENT_TIMEOUT_SECONDS": "25",
                   "MDO_REQUEST_TIMEOUT_SECONDS": "10"},
    )
    yield operator
    factory.stop_all()


@pytest.fixture
def registry(private_mlflow) -> Iterator[MlflowModels]:
    registry = MlflowModels(private_mlflow.uri)
    yield registry
    if private_mlflow.proc is None:  # a test failed while MLflow was down: bring it back for the cleanup
        private_mlflow.start()
    registry.cleanup()


# --------------------------------------------------------------------------------- MLflow killed
@needs_fake_pods
@pytest.mark.mlflow
@pytest.mark.timeout(420)
def test_mlflow_killed_while_polling_then_restarted(control_plane, cluster, module_namespace, faults_operator,
                                                   private_mlflow, registry):
    namespace, model = module_namespace, f"faults-outage-{short_id()}"
    cr_name = deploy_until_running(cluster, namespace, registry, faults_operator, model)
    deployment_uid = cluster.get("deployment", namespace, cr_name)["metadata"]["uid"]

    private_mlflow.kill()  # SIGKILL: no goodbye, connections refused from now on
    # The poller notices (backoff, mdo_mlflow_up 0) and the resync puts the outage into the CR status.
    wait_for(lambda: "mdo_mlflow_up 0.0" in faults_operator.metrics_text(), TIMEOUT, "mdo_mlflow_up 0",
             diagnostics=lambda: faults_operator.log_tail(40))
    cr = wait_cr(cluster, namespace, cr_name,
                 lambda cr: condition(cr, "Progressing").get("reason") == "MlflowUnavailable",
                 "Progressing reason MlflowUnavailable", faults_operator)
    message = condition(cr, "Progressing")["message"]
    assert "MLflow unavailable" in message and "retrying" in message, message
    assert condition(cr, "Ready")["status"] == "True"  # the model keeps serving: an MLflow outage stops nothing
    assert condition(cr, "Degraded")["status"] == "False"

    # A change made during the outage (pause the deployment) must reach MLflow's tags once it is back.
    cluster.patch_cr(namespace, cr_name, {"spec": {"paused": True}})
    wait_cr(cluster, namespace, cr_name, lambda cr: cr["status"].get("phase") == "paused", "phase paused",
            faults_operator)
    # Several poll intervals of outage: nothing deleted, recreated or duplicated, no crash.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert cluster.cr(namespace, cr_name) is not None, "the outage deleted the ModelDeployment"
        assert cluster.get("deployment", namespace, cr_name)["metadata"]["uid"] == deployment_uid
        time.sleep(0.5)
    assert_operator_survived(faults_operator)

    private_mlflow.start()  # same port, same sqlite store
    # Recovery waits are longer: a restarted MLflow answers slowly at first on a loaded machine.
    wait_for(lambda: "mdo_mlflow_up 1.0" in faults_operator.metrics_text(), 2 * TIMEOUT, "mdo_mlflow_up 1",
             diagnostics=lambda: faults_operator.log_tail(40))
    # Right after MLflow returns, the poller may write 'paused' with the outage message the CR still shows;
    # the next reconcile clears it from the CR, and the poll after that copies the new message to the tag.
    tags = wait_tags(registry, model, {"deployment_status": "paused"}, timeout=2 * TIMEOUT, message_contains="paused")
    assert tags["deployment_version"] == "1" and tags["deployment_name"] == cr_name
    wait_for(lambda: cluster.get("deployment", namespace, cr_name)["spec"]["replicas"] == 0, 2 * TIMEOUT,
             "the Deployment scaled to 0 once MLflow answered")
    cr = wait_cr(cluster, namespace, cr_name,
                 lambda cr: condition(cr, "Progressing").get("reason") != "MlflowUnavailable",
                 "the MLflow outage cleared from the status", faults_operator)
    assert cluster.get("deployment", namespace, cr_name)["metadata"]["uid"] == deployment_uid
    assert_no_duplicates_or_orphans(cluster, namespace)
    assert_operator_survived(faults_operator)


# ------------------------------------------------------------------------- API server restarted
@needs_fake_pods
@pytest.mark.timeout(420)
def test_apiserver_restart_operator_reconnects(control_plane, cluster, module_namespace, faults_operator,
                                               registry):
    namespace = module_namespace
    model = f"faults-api-{short_id()}"
    registry.register(model, versions=1)
    before, after = f"before-{short_id()}", f"after-{short_id()}"
    cluster.create_cr(namespace, mlflow_model_cr(before, model, node_selector=control_plane.node_selector,
                                                 version="1"))
    wait_cr(cluster, namespace, before, cr_ready, "Ready=True", faults_operator)

    control_plane.restart_apiserver()  # ~13 s down; every watch and connection of the operator breaks
    assert_operator_survived(faults_operator)

    # A CR created after the restart is seen (the watch reconnected) and deployed.
    cluster.create_cr(namespace, mlflow_model_cr(after, model, node_selector=control_plane.node_selector,
                                                 version="1"))
    cr = wait_cr(cluster, namespace, after, cr_ready, "Ready=True after the API server restart", faults_operator,
                 timeout=90)
    assert cr["status"]["resolvedVersion"] == "1"
    # ... and an update of the CR from before the restart is acted on too.
    cluster.patch_cr(namespace, before, {"spec": {"replicas": 2}})
    wait_for(lambda: cluster.get("deployment", namespace, before)["spec"]["replicas"] == 2, TIMEOUT,
             "the Deployment of the earlier CR scaled to 2")
    wait_cr(cluster, namespace, before, cr_ready, "Ready=True with 2 replicas", faults_operator)
    for name in (before, after):
        assert len(cluster.owned("deployment", namespace, name)) == 1
    assert_no_duplicates_or_orphans(cluster, namespace)
    assert_operator_survived(faults_operator)
    for name in (before, after):
        cluster.delete("modeldeployment", namespace, name)


# --------------------------------------------------------------------------- malformed config
def broken_pipeline_config() -> tuple[dict[str, Any], str]:
    """A config the CRD schema accepts (inline is free-form) but the runtime's loader rejects; and the field."""
    config = pipeline_config(scale=1.0)
    config["input_data_to_model"]["type"] = "NoSuchTransformer"
    return config, "input_data_to_model"


def test_the_runtime_rejects_the_broken_config(tmp_path):
    """The premise of the operator test below: model_deploy.runtime.config.load_config refuses this config
    with a message naming the field, and `model-manager` exits 2 with one clear line (no traceback)."""
    from model_deploy.runtime.config import load_config
    from model_deploy.runtime.errors import ConfigError

    config, field = broken_pipeline_config()
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert any(field in problem and "NoSuchTransformer" in problem for problem in caught.value.problems), \
        caught.value.problems

    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(config))
    result = subprocess.run([str(Path(sys.executable).parent / "model-manager"), "-l", str(REPO_ROOT / "examples"
                                                                                            / "demo"), "-c",
                             str(path), "--once", "--metrics-port", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "invalid pipeline config" in result.stderr and field in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@needs_fake_pods
def test_malformed_inline_config_is_reported_not_deployed(control_plane, cluster, module_namespace,
                                                          faults_operator):
    namespace, name = module_namespace, f"badconfig-{short_id()}"
    config, field = broken_pipeline_config()
    body = local_model_cr(name, node_selector=control_plane.node_selector)
    body["spec"]["config"] = {"inline": config}
    cluster.create_cr(namespace, body)
    try:
        cr = wait_cr(cluster, namespace, name, degraded_with("InvalidConfig"), "Degraded InvalidConfig",
                     faults_operator)
        message = condition(cr, "Degraded")["message"]
        assert "spec.config.inline" in message and field in message and "NoSuchTransformer" in message, message
        assert condition(cr, "Ready")["status"] == "False" and cr["status"]["phase"] == "failed"
        assert cluster.owned("deployment", namespace, name) == [], "a Deployment that would crash-loop was created"
        assert cluster.owned("configmap", namespace, name) == []

        # The fix recovers: a valid config deploys.
        cluster.patch_cr(namespace, name, {"spec": {"config": {"inline": pipeline_config(scale=1.0)}}})
        wait_cr(cluster, namespace, name, cr_ready, "Ready=True after the config fix", faults_operator)
        assert_no_duplicates_or_orphans(cluster, namespace)
        assert_operator_survived(faults_operator)
    finally:
        cluster.delete("modeldeployment", namespace, name)


@needs_fake_pods
def test_breaking_the_config_of_a_running_deployment_keeps_the_last_good_rollout(
        control_plane, cluster, module_namespace, faults_operator):
    namespace, name = module_namespace, f"editbad-{short_id()}"
    body = local_model_cr(name, node_selector=control_plane.node_selector)
    cluster.create_cr(namespace, body)
    try:
        wait_cr(cluster, namespace, name, cr_ready, "Ready=True", faults_operator)
        deployment = cluster.get("deployment", namespace, name)
        template, good_text = deployment["spec"]["template"], cluster.get("configmap", namespace,
                                                                          f"{name}-pipeline")["data"]

        config, field = broken_pipeline_config()
        cluster.patch_cr(namespace, name, {"spec": {"config": {"inline": config}}})
        cr = wait_cr(cluster, namespace, name, degraded_with("InvalidConfig"), "Degraded InvalidConfig",
                     faults_operator)
        assert field in condition(cr, "Degraded")["message"]
        time.sleep(3)  # a resync (3 s) later: still no rollout of the broken config
        after = cluster.get("deployment", namespace, name)
        assert after["metadata"]["uid"] == deployment["metadata"]["uid"]
        assert after["spec"]["template"] == template, "the broken config was rolled out"
        assert cluster.get("configmap", namespace, f"{name}-pipeline")["data"] == good_text
        assert_operator_survived(faults_operator)

        cluster.patch_cr(namespace, name, {"spec": {"config": {"inline": pipeline_config(scale=2.0)}}})
        cr = wait_cr(cluster, namespace, name,
                     lambda cr: cr_ready(cr) and condition(cr, "Degraded").get("status") == "False",
                     "Ready=True on the fixed config", faults_operator)
        assert "* 2.0" in cluster.get("configmap", namespace, f"{name}-pipeline")["data"]["pipeline.yaml"]
        assert_no_duplicates_or_orphans(cluster, namespace)
    finally:
        cluster.delete("modeldeployment", namespace, name)


# ------------------------------------------------------------------------ missing model version
@needs_fake_pods
def test_pinned_version_99_is_model_not_found_until_the_spec_is_fixed(control_plane, cluster, module_namespace,
                                                                     faults_operator, registry):
    namespace, name, model = module_namespace, f"v99-{short_id()}", f"faults-v99-{short_id()}"
    registry.register(model, versions=1)
    cluster.create_cr(namespace, mlflow_model_cr(name, model, node_selector=control_plane.node_selector,
                                                 version="99"))
    cr = wait_cr(cluster, namespace, name, degraded_with("ModelNotFound"), "Degraded ModelNotFound", faults_operator)
    message = condition(cr, "Degraded")["message"]
    assert model in message and "version 99" in message and "spec.model.mlflow" in message, message
    assert cr["status"]["phase"] == "failed"
    assert cluster.owned("deployment", namespace, name) == []
    assert_operator_survived(faults_operator)

    cluster.patch_cr(namespace, name, {"spec": {"model": {"mlflow": {"version": "1"}}}})
    cr = wait_cr(cluster, namespace, name, cr_ready, "Ready=True on version 1", faults_operator)
    assert condition(cr, "Degraded")["status"] == "False" and cr["status"]["resolvedVersion"] == "1"
    assert len(cluster.owned("deployment", namespace, name)) == 1
    assert_no_duplicates_or_orphans(cluster, namespace)
    cluster.delete("modeldeployment", namespace, name)


@needs_fake_pods
@pytest.mark.mlflow
def test_mlflow_managed_model_losing_its_version_is_failed_in_tags_and_recovers(
        control_plane, cluster, module_namespace, faults_operator, registry):
    namespace, model = module_namespace, f"faults-gone-{short_id()}"
    cr_name = deploy_until_running(cluster, namespace, registry, faults_operator, model)

    registry.client.delete_model_version(model, "1")  # the deployed version disappears from the registry
    cr = wait_cr(cluster, namespace, cr_name, degraded_with("ModelNotFound"), "Degraded ModelNotFound",
                 faults_operator)
    assert "version 1" in condition(cr, "Degraded")["message"]
    # A status push may first write 'failed' with the CR's message (version 1 not found), before the next
    # poll sees that the model has no versions left and writes its own: wait for that one.
    tags = wait_tags(registry, model, {"deployment_status": "failed"}, message_contains="no versions")
    assert "register a version" in tags["deployment_message"], tags
    assert len(cluster.owned("deployment", namespace, cr_name)) <= 1  # the last good one may keep running
    assert_operator_survived(faults_operator)

    version = registry.add_version(model)  # the fix: a new version; the poller moves the CR to it
    assert version == "2"
    cr = wait_cr(cluster, namespace, cr_name,
                 lambda cr: cr_ready(cr) and cr["status"].get("resolvedVersion") == "2", "Ready=True on version 2",
                 faults_operator)
    assert condition(cr, "Degraded")["status"] == "False"
    wait_tags(registry, model, {"deployment_status": "running", "deployment_version": "2"})
    assert len(cluster.owned("deployment", namespace, cr_name)) == 1
    assert_no_duplicates_or_orphans(cluster, namespace)
    assert_operator_survived(faults_operator)


# ----------------------------------------------------------------- missing artifacts (runtime level)
@pytest.mark.mlflow
@pytest.mark.timeout(240)
def test_runtime_reports_missing_model_artifacts_without_a_traceback(mlflow_server, tmp_path):
    """The operator never loads models, so artifacts that are gone surface in the runtime: `model-manager
    -n X -v 1 --once` must exit non-zero (3: model could not be loaded) with one clear line."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    name = f"faults-no-artifacts-{short_id()}"
    run = client.create_run("0")
    client.create_registered_model(name)
    # A version whose source directory was never uploaded (or was deleted from the artifact store).
    client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "EPICS_"))}
    env.update(MLFLOW_TRACKING_URI=mlflow_server.uri, MODEL_CACHE_DIR=str(tmp_path / "cache"))
    try:
        result = subprocess.run([str(Path(sys.executable).parent / "model-manager"), "-n", name, "-v", "1", "--once"],
                                capture_output=True, text=True, timeout=180, env=env)
    finally:
        client.delete_registered_model(name)
    assert result.returncode == 3, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("model-manager: error:")]
    assert len(errors) == 1, result.stderr
    assert f"cannot load model {name} version 1" in errors[0] and "model" in errors[0], errors[0]
    assert "404" in errors[0] or "not found" in errors[0].lower() or "does not exist" in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "cache").rglob("MLmodel")), "a failed download must not leave a cache entry"
