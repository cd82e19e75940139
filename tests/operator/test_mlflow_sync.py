"""The MLflow poller against a real `mlflow server` and a real kube-apiserver (e2e/controlplane.py).

Models are registered with MlflowClient.create_registered_model + create_model_version(source=s3://...):
the operator never loads a model, so no artifacts are needed. Every test works in its own namespace and
deletes the registered models it created.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow import MlflowClient

from model_deploy.operator.crd import ANNOTATION_REGISTERED_MODEL, LABEL_MANAGED_BY, parse_spec
from model_deploy.operator.kube import Kube
from model_deploy.operator.metrics import OperatorMetrics
from model_deploy.operator.mlflow_sync import (
    TAG_MESSAGE,
    TAG_NAME,
    TAG_NAMESPACE,
    TAG_STATUS,
    TAG_TIMESTAMP,
    TAG_VERSION,
    MlflowSync,
    deployment_name_for_model,
    format_timestamp,
)
from model_deploy.operator.settings import OperatorSettings
from model_deploy.operator.status import compute_status
from tests.fixtures.mlflow_server import MlflowServer, free_port
from tests.operator.test_kube import wait_until

pytestmark = pytest.mark.mlflow
TAG_WRITES = "mdo_mlflow_tag_writes_total"


class ManualClock:
    """Deterministic timestamps for the tags (the poller takes `clock`)."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(autouse=True)
def fail_fast_mlflow_client(monkeypatch):
    # What the operator sets at startup (configure_mlflow_client_env), scoped to each test.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # generous: CI machines can be loaded
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


class Registry:
    """Registers uniquely named models on one MLflow server and removes them afterwards."""

    def __init__(self, uri: str):
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.prefix = f"t{uuid.uuid4().hex[:6]}"
        self.names: list[str] = []

    def model(self, suffix: str, tags: dict[str, str] | None = None, versions: int = 1) -> str:
        name = f"{self.prefix} {suffix}"
        self.client.create_registered_model(name, tags=tags or {})
        self.names.append(name)
        for _ in range(versions):
            self.add_version(name)
        return name

    def add_version(self, name: str) -> str:
        return self.client.create_model_version(name, source=f"s3://models/{name}", await_creation_for=0).version

    def tags(self, name: str) -> dict[str, str]:
        return self.client.get_registered_model(name).tags

    def cleanup(self) -> None:
        for name in self.names:
            try:
                self.client.delete_registered_model(name)
            except Exception:  # noqa: BLE001 - best effort (the server may be down in a fault test)
                pass


@pytest.fixture
def registry(mlflow_server):
    reg = Registry(mlflow_server.uri)
    yield reg
    reg.cleanup()


def settings_for(uri: str, namespace: str, **overrides: Any) -> OperatorSettings:
    values = dict(
        namespace=namespace, mlflow_tracking_uri=uri, mlflow_poll_interval_seconds=0.5,
        mlflow_backoff_initial_seconds=0.1, mlflow_backoff_max_seconds=0.4, mlflow_request_timeout_seconds=30,
    )
    values.update(overrides)
    return OperatorSettings(**values)


def make_sync(uri: str, kube: Kube, namespace: str, clock: ManualClock | None = None) -> MlflowSync:
    return MlflowSync(settings_for(uri, namespace), kube, metrics=OperatorMetrics(), clock=clock or ManualClock())


def poll(sync: MlflowSync):
    outcome = asyncio.run(sync.poll_once())
    assert outcome.ok, outcome.error
    return outcome


def poll_until_ok(sync: MlflowSync, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        outcome = asyncio.run(sync.poll_once())
        if outcome.ok or time.monotonic() > deadline:
            assert outcome.ok, outcome.error
            return outcome
        time.sleep(outcome.next_delay)


def own(outcome, registry: Registry) -> dict[str, str]:
    """{cr_name: action kind} restricted to this test's models (the session server is shared)."""
    names = {deployment_name_for_model(n) for n in registry.names}
    return {a.cr_name: a.kind for a in outcome.actions if a.cr_name in names}


def ready_status(kube: Kube, namespace: str, name: str, version: str) -> dict[str, Any]:
    """A status as the operator computes it for a rolled-out Deployment (no operator runs here)."""
    deployment = {"metadata": {"name": name, "generation": 1}, "spec": {"replicas": 1},
                  "status": {"observedGeneration": 1, "updatedReplicas": 1, "availableReplicas": 1,
                             "readyReplicas": 1, "replicas": 1}}
    cr = kube.get_cr(namespace, name)
    status = compute_status(generation=1, spec=parse_spec(cr["spec"]), spec_error=None, deployment=deployment,
                            resolved_version=version, previous_status=cr.get("status"),
                            now=datetime.now(timezone.utc))
    return {k: v for k, v in status.items() if v is not None}


class MlflowRequests:
    """Every HTTP request this process sends to one MLflow server, including the ones the MLflow client
    makes on its own (MlflowClient.set_registered_model_tag GETs the model first). Counting requests, not
    time, keeps the latency budget of a status change deterministic."""

    def __init__(self, uri: str, monkeypatch: pytest.MonkeyPatch):
        self.uri = uri
        self.calls: list[tuple[str, str, dict[str, Any]]] = []  # (method, endpoint, params or body)
        original = requests.Session.request
        recorder = self

        def request(session, method, url, *args, **kwargs):
            if str(url).startswith(recorder.uri):
                endpoint = urllib.parse.urlparse(url).path.split("/mlflow/", 1)[-1]
                body = kwargs.get("json") or kwargs.get("params") or {}
                recorder.calls.append((method.upper(), endpoint, dict(body)))
            return original(session, method, url, *args, **kwargs)

        monkeypatch.setattr(requests.Session, "request", request)

    def take(self) -> list[tuple[str, str, dict[str, Any]]]:
        calls, self.calls = self.calls, []
        return calls

    @staticmethod
    def tag_sets(calls, model_name: str) -> list[str]:
        """Keys of the set-tag requests for one model, in the order they were sent."""
        return [body["key"] for method, endpoint, body in calls
                if endpoint == "registered-models/set-tag" and body.get("name") == model_name]

    @staticmethod
    def model_gets(calls, model_name: str) -> int:
        return sum(1 for method, endpoint, body in calls
                   if endpoint == "registered-models/get" and body.get("name") == model_name)


@pytest.fixture
def mlflow_requests(mlflow_server, monkeypatch) -> MlflowRequests:
    return MlflowRequests(mlflow_server.uri, monkeypatch)


# ------------------------------------------------------------------------------------------ lifecycle
def test_poll_creates_updates_and_deletes_mlflow_managed_crs(mlflow_server, registry, kube, namespace):
    prod = registry.model("prod model", {"deployment_type": "prod"})
    legacy = registry.model("legacy", {"deployment_type": " Continuous "}, versions=2)
    registry.client.set_registered_model_alias(legacy, "champion", "1")
    typo = registry.model("typo", {"deployment_type": "prdo"})
    untagged = registry.model("untagged")
    sync = make_sync(mlflow_server.uri, kube, namespace)

    first = poll(sync)
    prod_cr, legacy_cr = deployment_name_for_model(prod), deployment_name_for_model(legacy)
    assert own(first, registry) == {prod_cr: "create", legacy_cr: "create", deployment_name_for_model(typo): "noop"}
    cr = kube.get_cr(namespace, prod_cr)
    assert cr["metadata"]["labels"][LABEL_MANAGED_BY] == "mlflow"
    assert cr["metadata"]["annotations"][ANNOTATION_REGISTERED_MODEL] == prod
    assert cr["spec"]["model"]["mlflow"] == {"name": prod, "version": "1"}
    assert kube.get_cr(namespace, legacy_cr)["spec"]["model"]["mlflow"]["version"] == "1"  # champion, not latest

    assert registry.tags(prod) == {
        "deployment_type": "prod", TAG_STATUS: "pending", TAG_TIMESTAMP: "2025-01-01T12:00:00Z",
        TAG_NAME: prod_cr, TAG_NAMESPACE: namespace, TAG_VERSION: "1",
        TAG_MESSAGE: "ModelDeployment created; waiting for the operator",
    }
    assert registry.tags(typo)[TAG_STATUS] == "failed"
    assert registry.tags(typo)[TAG_MESSAGE] == "deployment_type 'prdo' is not one of prod, continuous"
    assert kube.get_cr(namespace, deployment_name_for_model(typo)) is None
    assert registry.tags(untagged) == {}

    registry.add_version(prod)  # latest moves to 2: the CR follows
    assert own(poll(sync), registry)[prod_cr] == "update"
    assert kube.get_cr(namespace, prod_cr)["spec"]["model"]["mlflow"]["version"] == "2"
    assert registry.tags(prod)[TAG_VERSION] == "2"

    registry.client.set_registered_model_tag(legacy, "deployment_terminate", "Yes")
    registry.client.delete_registered_model_tag(prod, "deployment_type")
    third = poll(sync)
    assert own(third, registry) == {prod_cr: "delete", legacy_cr: "delete", deployment_name_for_model(typo): "noop"}
    assert kube.get_cr(namespace, prod_cr) is None and kube.get_cr(namespace, legacy_cr) is None
    assert registry.tags(legacy)[TAG_STATUS] == "terminated"
    assert "deployment_terminate is set" in registry.tags(legacy)[TAG_MESSAGE]
    assert registry.tags(prod)[TAG_STATUS] == "terminated"
    assert "deployment_type tag was removed" in registry.tags(prod)[TAG_MESSAGE]

    writes = sync.metrics.value(TAG_WRITES)
    steady = own(poll(sync), registry)  # nothing left to do
    assert steady == {legacy_cr: "noop", deployment_name_for_model(typo): "noop"}
    assert sync.metrics.value(TAG_WRITES) == writes


def test_tags_are_written_only_when_they_change(mlflow_server, registry, kube, namespace):
    name = registry.model("steady", {"deployment_type": "prod"})
    clock = ManualClock()
    sync = make_sync(mlflow_server.uri, kube, namespace, clock)
    poll(sync)
    after_first = sync.metrics.value(TAG_WRITES)
    assert after_first == 6  # status, timestamp, name, namespace, version, message

    clock.advance(60)
    poll(sync)
    assert sync.metrics.value(TAG_WRITES) == after_first
    assert registry.tags(name)[TAG_TIMESTAMP] == "2025-01-01T12:00:00Z"  # no status change, no new time

    cr_name = deployment_name_for_model(name)
    kube.patch_cr_status(namespace, cr_name, ready_status(kube, namespace, cr_name, "1"), "test")
    clock.advance(60)
    poll(sync)
    tags = registry.tags(name)
    assert tags[TAG_STATUS] == "running" and tags[TAG_MESSAGE] == "1/1 replicas ready (model version 1)"
    assert tags[TAG_TIMESTAMP] == format_timestamp(clock.now)
    assert sync.metrics.value(TAG_WRITES) == after_first + 3  # status, message, timestamp

    poll(sync)
    assert sync.metrics.value(TAG_WRITES) == after_first + 3


def test_status_path_pushes_tags_at_once(mlflow_server, registry, kube, namespace):
    name = registry.model("fast", {"deployment_type": "prod"})
    sync = make_sync(mlflow_server.uri, kube, namespace)
    poll(sync)
    cr_name = deployment_name_for_model(name)
    kube.patch_cr_status(namespace, cr_name, ready_status(kube, namespace, cr_name, "1"), "test")
    running_cr = kube.get_cr(namespace, cr_name)
    assert asyncio.run(sync.push_tags_for_cr(running_cr)) == 3
    assert registry.tags(name)[TAG_STATUS] == "running"
    assert asyncio.run(sync.push_tags_for_cr(running_cr)) == 0  # nothing changed

    registry.client.set_registered_model_tag(name, "deployment_terminate", "true")
    poll(sync)  # deletes the CR, reports terminated
    assert registry.tags(name)[TAG_STATUS] == "terminated"
    # A push still in flight for the deleted CR never brings a status back.
    assert asyncio.run(sync.push_tags_for_cr(running_cr)) == 0
    assert registry.tags(name)[TAG_STATUS] == "terminated"


def test_status_path_of_a_model_not_polled_yet_reads_it_and_leaves_other_intents_to_the_poller(
    mlflow_server, registry, kube, namespace, mlflow_requests
):
    name = registry.model("cold", {"deployment_type": "prod"})
    poll(make_sync(mlflow_server.uri, kube, namespace))
    cr_name = deployment_name_for_model(name)
    kube.patch_cr_status(namespace, cr_name, ready_status(kube, namespace, cr_name, "1"), "test")
    registry.client.set_registered_model_tag(name, "deployment_terminate", "true")
    mlflow_requests.take()

    fresh = make_sync(mlflow_server.uri, kube, namespace)  # a restarted operator: nothing known yet
    assert asyncio.run(fresh.push_tags_for_cr(kube.get_cr(namespace, cr_name))) == 0  # the poller's job now
    calls = mlflow_requests.take()
    assert MlflowRequests.model_gets(calls, name) == 1 and MlflowRequests.tag_sets(calls, name) == []

    registry.client.delete_registered_model_tag(name, "deployment_terminate")
    restarted = make_sync(mlflow_server.uri, kube, namespace)
    assert asyncio.run(restarted.push_tags_for_cr(kube.get_cr(namespace, cr_name))) == 3
    assert registry.tags(name)[TAG_STATUS] == "running"


# ------------------------------------------------------------------------------- request budget
# A status change must reach MLflow in one request per changed tag: no GET before the writes (the tags
# the poll read, plus the operator's own writes since, are known), no hidden GET per SET (the MLflow
# client's prompt check), no rewrite of tags another writer has just written. Each extra request is
# a serial round trip on the way from Ready to the `running` tag.
def test_a_status_change_costs_one_set_per_changed_tag_and_nothing_else(
    mlflow_server, registry, kube, namespace, mlflow_requests
):
    name = registry.model("budget", {"deployment_type": "prod"})
    cr_name = deployment_name_for_model(name)
    sync = make_sync(mlflow_server.uri, kube, namespace)
    mlflow_requests.take()

    poll(sync)  # creates the CR and reports it pending
    calls = mlflow_requests.take()
    assert [endpoint for _, endpoint, _ in calls].count("registered-models/search") == 2
    assert MlflowRequests.model_gets(calls, name) == 0
    assert sorted(MlflowRequests.tag_sets(calls, name)) == sorted(
        [TAG_STATUS, TAG_TIMESTAMP, TAG_NAME, TAG_NAMESPACE, TAG_VERSION, TAG_MESSAGE])
    assert MlflowRequests.tag_sets(calls, name)[-1] == TAG_STATUS  # the status last

    kube.patch_cr_status(namespace, cr_name, ready_status(kube, namespace, cr_name, "1"), "test")
    assert asyncio.run(sync.push_tags_for_cr(kube.get_cr(namespace, cr_name))) == 3
    calls = mlflow_requests.take()
    assert len(calls) == 3, calls  # nothing but the three SETs
    assert sorted(MlflowRequests.tag_sets(calls, name)) == sorted([TAG_STATUS, TAG_MESSAGE, TAG_TIMESTAMP])
    assert MlflowRequests.tag_sets(calls, name)[-1] == TAG_STATUS
    assert registry.tags(name)[TAG_STATUS] == "running"
    mlflow_requests.take()

    # Nothing changed: a push costs no MLflow request at all, a poll only its two searches.
    assert asyncio.run(sync.push_tags_for_cr(kube.get_cr(namespace, cr_name))) == 0
    assert mlflow_requests.take() == []
    poll(sync)
    calls = mlflow_requests.take()
    assert MlflowRequests.tag_sets(calls, name) == [] and MlflowRequests.model_gets(calls, name) == 0


def test_a_poll_that_read_the_tags_before_a_push_does_not_write_them_again(
    mlflow_server, registry, kube, namespace, mlflow_requests
):
    """The poll's search and its tag step are apart in time; a push landing in between must not make the
    poll rewrite the status, message and timestamp (a wasted round trip holding the model's lock, and a
    timestamp that moves without a status change)."""
    name = registry.model("interleaved", {"deployment_type": "prod"})
    cr_name = deployment_name_for_model(name)
    clock = ManualClock()
    sync = make_sync(mlflow_server.uri, kube, namespace, clock)
    poll(sync)
    kube.patch_cr_status(namespace, cr_name, ready_status(kube, namespace, cr_name, "1"), "test")
    running_cr = kube.get_cr(namespace, cr_name)
    clock.advance(60)
    mlflow_requests.take()

    async def waiters(lock: asyncio.Lock, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(getattr(lock, "_waiters", None) or ()) < count:
            assert time.monotonic() < deadline, "the push/poll never reached the model's lock"
            await asyncio.sleep(0.01)

    async def interleave():
        lock = sync._tag_locks[name]
        await lock.acquire()
        push = asyncio.create_task(sync.push_tags_for_cr(running_cr))
        await waiters(lock, 1)
        polled = asyncio.create_task(sync.poll_once())  # searches now: still `pending` in MLflow
        await waiters(lock, 2)
        clock.advance(60)  # a rewrite by the poll would carry another timestamp
        lock.release()
        return await push, await polled

    pushed, outcome = asyncio.run(interleave())
    assert pushed == 3 and outcome.ok
    assert sorted(MlflowRequests.tag_sets(mlflow_requests.take(), name)) == sorted(
        [TAG_STATUS, TAG_MESSAGE, TAG_TIMESTAMP])  # the push's, and none from the poll
    tags = registry.tags(name)
    assert tags[TAG_STATUS] == "running" and tags[TAG_TIMESTAMP] == "2025-01-01T12:02:00Z"


def test_known_tags_never_hide_a_tag_changed_behind_the_operators_back(mlflow_server, registry, kube, namespace):
    name = registry.model("edited", {"deployment_type": "prod"})
    cr_name = deployment_name_for_model(name)
    sync = make_sync(mlflow_server.uri, kube, namespace)
    poll(sync)
    kube.patch_cr_status(namespace, cr_name, ready_status(kube, namespace, cr_name, "1"), "test")
    assert asyncio.run(sync.push_tags_for_cr(kube.get_cr(namespace, cr_name))) == 3
    registry.client.set_registered_model_tag(name, TAG_STATUS, "pending")  # someone edits it by hand
    registry.client.delete_registered_model_tag(name, TAG_MESSAGE)
    poll(sync)  # every poll reads the tags afresh
    tags = registry.tags(name)
    assert tags[TAG_STATUS] == "running" and tags[TAG_MESSAGE] == "1/1 replicas ready (model version 1)"


def test_a_cr_not_managed_by_mlflow_is_never_taken_over(mlflow_server, registry, kube, namespace):
    name = registry.model("taken", {"deployment_type": "prod"})
    cr_name = deployment_name_for_model(name)
    user_cr = {"metadata": {"name": cr_name, "namespace": namespace},
               "spec": {"model": {"mlflow": {"name": "something-else", "version": "9"}}}}
    kube.apply_cr(user_cr, "kubectl")
    sync = make_sync(mlflow_server.uri, kube, namespace)
    outcome = poll(sync)
    assert own(outcome, registry) == {cr_name: "noop"}
    assert kube.get_cr(namespace, cr_name)["spec"]["model"]["mlflow"]["name"] == "something-else"
    tags = registry.tags(name)
    assert tags[TAG_STATUS] == "failed" and "MLflow does not manage already exists" in tags[TAG_MESSAGE]


def test_search_follows_pagination(mlflow_server, registry, kube, namespace, monkeypatch):
    monkeypatch.setattr("model_deploy.operator.mlflow_sync.SEARCH_PAGE_SIZE", 2)
    names = [registry.model(f"page {i}", {"deployment_type": "prod"}) for i in range(5)]
    outcome = poll(make_sync(mlflow_server.uri, kube, namespace))
    assert own(outcome, registry) == {deployment_name_for_model(n): "create" for n in names}


# --------------------------------------------------------------------------------------------- faults
def test_mlflow_outage_is_logged_once_backs_off_and_recovers(tmp_path, kube, namespace, caplog, monkeypatch):
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        registry = Registry(server.uri)
        name = registry.model("outage", {"deployment_type": "prod"})
        sync = make_sync(server.uri, kube, namespace)
        poll(sync)
        assert sync.metrics.value("mdo_mlflow_up") == 1

        server.kill()
        cr_name = deployment_name_for_model(name)
        # The deployment becomes ready while MLflow is down: the tag has to catch up after recovery.
        kube.patch_cr_status(namespace, cr_name, ready_status(kube, namespace, cr_name, "1"), "test")
        caplog.set_level(logging.DEBUG, logger="model_deploy.operator.mlflow_sync")
        delays = []
        for _ in range(4):
            outcome = asyncio.run(sync.poll_once())
            assert not outcome.ok and "connection refused" in outcome.error
            delays.append(outcome.next_delay)
        assert delays == [0.1, 0.2, 0.4, 0.4]  # doubled up to the maximum
        assert sync.metrics.value("mdo_mlflow_up") == 0
        assert sync.metrics.value("mdo_mlflow_poll_errors_total") == 4
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.endswith("mlflow_sync")]
        assert len(warnings) == 1 and "retrying with backoff" in warnings[0].getMessage()
        assert kube.get_cr(namespace, cr_name) is not None  # an outage never deletes deployments
        # The status path does not hammer a server the poller knows to be down: it leaves it to the poller.
        requests_seen = MlflowRequests(server.uri, monkeypatch)
        assert asyncio.run(sync.push_tags_for_cr(kube.get_cr(namespace, cr_name))) == 0
        assert requests_seen.take() == [] and sync.pushes_paused()

        server.start()
        outcome = poll_until_ok(sync)  # a freshly started server may still be warming up
        assert outcome.next_delay == 0.5 and sync.consecutive_failures == 0
        assert sync.metrics.value("mdo_mlflow_up") == 1
        assert registry.tags(name)[TAG_STATUS] == "running"
        assert sum("recovered" in r.getMessage() for r in caplog.records) == 1
        assert not sync.pushes_paused()
        registry.cleanup()
    finally:
        server.stop()


def test_a_failed_push_backs_off_and_the_poller_writes_what_it_missed(tmp_path, kube, namespace, monkeypatch):
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        registry = Registry(server.uri)
        name = registry.model("push outage", {"deployment_type": "prod"})
        cr_name = deployment_name_for_model(name)
        sync = make_sync(server.uri, kube, namespace)
        poll(sync)
        server.kill()  # the poller has not noticed yet: the push finds out itself
        kube.patch_cr_status(namespace, cr_name, ready_status(kube, namespace, cr_name, "1"), "test")
        requests_seen = MlflowRequests(server.uri, monkeypatch)
        assert asyncio.run(sync.push_tags_for_cr(kube.get_cr(namespace, cr_name))) == 0  # no exception
        attempted = MlflowRequests.tag_sets(requests_seen.take(), name)
        assert attempted and TAG_STATUS not in attempted  # no status after a failed message/timestamp
        assert sync.pushes_paused()
        assert asyncio.run(sync.push_tags_for_cr(kube.get_cr(namespace, cr_name))) == 0
        assert requests_seen.take() == []  # backing off: not even tried

        server.start()
        poll_until_ok(sync)
        tags = registry.tags(name)
        assert tags[TAG_STATUS] == "running" and tags[TAG_MESSAGE] == "1/1 replicas ready (model version 1)"
        registry.cleanup()
    finally:
        server.stop()


# --------------------------------------------------------------------------------- with the operator
@pytest.fixture
def operator_process(kube_cluster, mlflow_server, namespace, tmp_path):
    """The real operator (`python -m model_deploy.operator`), watching only this test's namespace."""
    metrics_port = free_port()
    env = dict(
        os.environ,
        KUBECONFIG=kube_cluster.kubeconfig,
        MLFLOW_TRACKING_URI=mlflow_server.uri,
        MDO_NAMESPACE=namespace,
        MDO_WATCH_NAMESPACES=f'["{namespace}"]',
        MDO_METRICS_PORT=str(metrics_port),
        MDO_LIVENESS_PORT=str(free_port()),
        MDO_MLFLOW_POLL_INTERVAL_SECONDS="0.5",
        MDO_STATUS_RESYNC_SECONDS="5",
        MDO_MLFLOW_REQUEST_TIMEOUT_SECONDS="30",
        MDO_RUNTIME_IMAGE="example.invalid/model-deploy-runtime:test",  # kwok pods never pull it
    )
    log_path = tmp_path / "operator.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "model_deploy.operator", "--verbose"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])

    def healthy() -> bool:
        assert proc.poll() is None, f"operator exited:\n{log_path.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_until(healthy, timeout=60, interval=0.2)
    yield proc, metrics_port, log_path
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_operator_rolls_out_and_reports_running_in_mlflow(operator_process, registry, kube, namespace):
    proc, metrics_port, log_path = operator_process
    name = registry.model("e2e", {"deployment_type": "prod"})
    cr_name = deployment_name_for_model(name)

    def ready_at() -> float | None:
        cr = kube.get_cr(namespace, cr_name)
        return time.monotonic() if cr and (cr.get("status") or {}).get("phase") == "running" else None

    try:
        ready = wait_until(ready_at, timeout=90, interval=0.1)
        tagged = wait_until(lambda: registry.tags(name).get(TAG_STATUS) == "running" and time.monotonic(),
                            timeout=10, interval=0.1)
    except AssertionError:
        raise AssertionError(f"operator log:\n{log_path.read_text()[-4000:]}") from None
    assert tagged - ready < 2.0  # pushed from the status path, not after a poll interval or resync
    deployment = kube.get_deployment(namespace, cr_name)
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert deployment["metadata"]["ownerReferences"][0]["name"] == cr_name
    tags = registry.tags(name)
    assert tags[TAG_VERSION] == "1" and tags[TAG_NAME] == cr_name and tags[TAG_NAMESPACE] == namespace

    registry.client.set_registered_model_tag(name, "deployment_terminate", "true")
    wait_until(lambda: registry.tags(name).get(TAG_STATUS) == "terminated", timeout=30)
    assert kube.get_cr(namespace, cr_name) is None
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        exposition = resp.read().decode()
    assert 'mdo_reconciles_total{result="ok"}' in exposition and "mdo_mlflow_up 1.0" in exposition
    assert proc.poll() is None
