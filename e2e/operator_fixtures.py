"""Fixtures and helpers for the operator e2e tests: the real operator as a subprocess, against the real
control plane (e2e/controlplane.py) and a real MLflow server (tests/fixtures/mlflow_server.py).

Test modules import the fixtures they use by name (e2e/ is on sys.path via e2e/conftest.py). The
`cluster` fixture registers a report hook that appends the log of every running operator subprocess to a
failing test's report ("operator log ..." sections).

Fixtures:
  crd                 session: crds/modeldeployment.yaml applied and Established.
  cluster             session: a `Cluster` (kubernetes python client on the control plane's kubeconfig).
  namespace           function: a fresh namespace, deleted afterwards (module_namespace: per module).
  operator_factory    function: `start(namespace, **options) -> OperatorProcess`; all stopped at teardown
                      (module_operator_factory: the same, per module). No MLflow unless mlflow_uri=...
  mlflow_models       function: records registered models to delete at teardown (shared MLflow server).

Helpers: `wait_for(...)` (poll with a deadline, no fixed sleeps), `condition(...)`, CR builders,
`PhaseRecorder` (every phase a CR goes through, by watch), `OperatorProcess` (start/stop/kill/logs).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from controlplane import use_existing_cluster

REPO_ROOT = Path(__file__).resolve().parents[1]
CRD_PATH = REPO_ROOT / "crds" / "modeldeployment.yaml"
CHART_PATH = REPO_ROOT / "charts" / "model-deploy-operator"

# The API contract, spelled out rather than imported from model_deploy.operator.crd: a test that takes
# its expectations from the code under test cannot notice that code changing them.
GROUP = "deploy.lume.slac.stanford.edu"
VERSION = "v1alpha1"
PLURAL = "modeldeployments"
CRD_NAME = f"{PLURAL}.{GROUP}"
API_VERSION = f"{GROUP}/{VERSION}"
LABEL_DEPLOYMENT = f"{GROUP}/deployment"
LABEL_MANAGED_BY = f"{GROUP}/managed-by"
ANNOTATION_CHECKSUM = f"{GROUP}/config-checksum"
ANNOTATION_REGISTERED_MODEL = f"{GROUP}/registered-model"
FIELD_MANAGER = "model-deploy-operator"

# Pods only become Running/Ready without a container runtime on kwok; on a real cluster (kind) the runtime
# image would start, fail to reach PVs and never be Ready.
needs_fake_pods = pytest.mark.skipif(
    use_existing_cluster(),
    reason="needs kwok fake pods (Ready without a real runtime); on an existing cluster the runtime image "
    "really runs and cannot reach the control-system PVs",
)

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------- waiting
def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.2,
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy (returned); fail with `what`, the last value and
    `diagnostics()` at the deadline. Exceptions from `check` count as 'not yet' (the API may be restarting)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    last_error: BaseException | None = None
    while True:
        try:
            last = check()
            last_error = None
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - reported at the deadline
            last_error = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    details = f"last value: {last!r}"
    if last_error is not None:
        details += f"; last error: {type(last_error).__name__}: {last_error}"
    if diagnostics is not None:
        details += "\n" + diagnostics()
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; {details}", pytrace=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def condition(obj: dict[str, Any] | None, condition_type: str) -> dict[str, Any]:
    """The condition of that type in an object's status ({} when absent)."""
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == condition_type:
            return item
    return {}


def short_id() -> str:
    return uuid.uuid4().hex[:6]


# ------------------------------------------------------------------------------------------- cluster I/O
class Cluster:
    """Reads and writes on the control plane through the official python client (faster than forking
    kubectl in polling loops); objects come back as plain camelCase dicts, None when absent."""

    def __init__(self, kubeconfig: str):
        from kubernetes import client, config

        self.api_client = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.rbac = client.RbacAuthorizationV1Api(self.api_client)
        self.extensions = client.ApiextensionsV1Api(self.api_client)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return self.api_client.sanitize_for_serialization(obj)

    @staticmethod
    def _absent(exc: Exception) -> bool:
        return getattr(exc, "status", None) == 404

    def _typed(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        """(read, list, delete) calls of a namespaced kind."""
        table = {
            "deployment": (self.apps.read_namespaced_deployment, self.apps.list_namespaced_deployment,
                           self.apps.delete_namespaced_deployment),
            "replicaset": (self.apps.read_namespaced_replica_set, self.apps.list_namespaced_replica_set,
                           self.apps.delete_namespaced_replica_set),
            "service": (self.core.read_namespaced_service, self.core.list_namespaced_service,
                        self.core.delete_namespaced_service),
            "configmap": (self.core.read_namespaced_config_map, self.core.list_namespaced_config_map,
                          self.core.delete_namespaced_config_map),
            "pod": (self.core.read_namespaced_pod, self.core.list_namespaced_pod, self.core.delete_namespaced_pod),
            "serviceaccount": (self.core.read_namespaced_service_account,
                               self.core.list_namespaced_service_account,
                               self.core.delete_namespaced_service_account),
            "secret": (self.core.read_namespaced_secret, self.core.list_namespaced_secret,
                       self.core.delete_namespaced_secret),
        }
        return table[kind]

    # -- generic namespaced objects -------------------------------------------------------------------
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            if kind == "modeldeployment":
                return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            return self._plain(self._typed(kind)[0](name, namespace))
        except ApiException as exc:
            if self._absent(exc):
                return None
            raise

    def list(self, kind: str, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        kwargs = {"label_selector": label_selector} if label_selector else {}
        if kind == "modeldeployment":
            return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kwargs)["items"]
        return self._plain(self._typed(kind)[1](namespace, **kwargs))["items"]

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        from kubernetes.client.rest import ApiException

        try:
            if kind == "modeldeployment":
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            else:
                self._typed(kind)[2](name, namespace)
            return True
        except ApiException as exc:
            if self._absent(exc):
                return False
            raise

    # -- ModelDeployments -----------------------------------------------------------------------------
    def create_cr(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def patch_cr(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        # A dict body is sent as a JSON merge patch by CustomObjectsApi.
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)

    def cr(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("modeldeployment", namespace, name)

    def owned(self, kind: str, namespace: str, cr_name: str) -> list[dict[str, Any]]:
        """Objects of `kind` labelled as rendered for that CR."""
        return self.list(kind, namespace, f"{LABEL_DEPLOYMENT}={cr_name}")

    # -- namespaces -----------------------------------------------------------------------------------
    def namespace_exists(self, name: str) -> bool:
        from kubernetes.client.rest import ApiException

        try:
            self.core.read_namespace(name)
            return True
        except ApiException as exc:
            if self._absent(exc):
                return False
            raise

    def describe(self, namespace: str) -> str:
        """A compact dump of the namespace for failure messages."""
        lines = [f"--- namespace {namespace}:"]
        try:
            for cr in self.list("modeldeployment", namespace):
                status = cr.get("status") or {}
                lines.append(
                    f"  mdep/{cr['metadata']['name']} gen={cr['metadata'].get('generation')} "
                    f"status={json.dumps(status, sort_keys=True)[:900]}"
                )
            for kind in ("deployment", "replicaset", "pod"):
                for obj in self.list(kind, namespace):
                    status = obj.get("status") or {}
                    summary = status.get("phase") or {
                        key: status.get(key) for key in ("replicas", "readyReplicas", "availableReplicas")
                    }
                    lines.append(f"  {kind}/{obj['metadata']['name']} {summary}")
        except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the real failure
            lines.append(f"  (could not list: {exc})")
        return "\n".join(lines)


class PhaseRecorder:
    """Every status.phase one ModelDeployment goes through, in order, seen by a watch (short-lived phases
    such as `updating` are missed by polling). Consecutive repeats are collapsed.

    `start()` lists first and the watch resumes from that list's resourceVersion, and every reconnect from
    the last event's: a phase that passes before the watch's connection is made (a loaded machine, an
    operator starting up) or between two connections is still delivered. Only a resourceVersion too old to
    resume from (410 Gone) falls back to a fresh list."""

    def __init__(self, cluster: Cluster, namespace: str, name: str):
        import threading

        from kubernetes import watch

        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.phases: list[str] = []
        self._watch = watch.Watch()
        self._stopped = threading.Event()
        self._resource_version: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"phases-{name}")

    def start(self) -> "PhaseRecorder":
        self._list()
        self._thread.start()
        return self

    def _selector(self) -> dict[str, Any]:
        return {"field_selector": f"metadata.name={self.name}"}

    def _record(self, obj: dict[str, Any]) -> None:
        phase = ((obj or {}).get("status") or {}).get("phase")
        if phase and (not self.phases or self.phases[-1] != phase):
            self.phases.append(phase)

    def _list(self) -> None:
        listing = self.cluster.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                                    **self._selector())
        for item in listing.get("items") or []:
            self._record(item)
        self._resource_version = listing["metadata"]["resourceVersion"]

    def _run(self) -> None:
        from kubernetes.client.rest import ApiException

        while not self._stopped.is_set():
            try:
                for event in self._watch.stream(
                    self.cluster.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                    resource_version=self._resource_version, timeout_seconds=30, **self._selector(),
                ):
                    obj = event["object"] or {}
                    self._resource_version = (obj.get("metadata") or {}).get("resourceVersion",
                                                                            self._resource_version)
                    self._record(obj)
                    if self._stopped.is_set():
                        return
            except ApiException as exc:
                if exc.status == 410:  # too old to resume from: what happened meanwhile is lost, say so
                    self.phases.append("<watch expired>")
                    self._relist_quietly()
                else:
                    time.sleep(0.2)
            except Exception:  # noqa: BLE001 - e.g. the API server restarting: resume the watch
                time.sleep(0.2)

    def _relist_quietly(self) -> None:
        try:
            self._list()
        except Exception:  # noqa: BLE001 - retried by the next round of _run
            time.sleep(0.2)

    def since(self, phase: str, start: int = 0) -> list[str]:
        """The phases from the first `phase` at or after index `start` on ([] when not seen)."""
        for index in range(start, len(self.phases)):
            if self.phases[index] == phase:
                return self.phases[index:]
        return []

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()


def deployment_ready(deployment: dict[str, Any] | None) -> bool:
    """`kubectl rollout status` semantics: latest generation observed, every replica updated and available."""
    if not deployment:
        return False
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    desired = spec.get("replicas", 1)
    return (
        status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
        and status.get("updatedReplicas", 0) == desired
        and status.get("availableReplicas", 0) == desired
        and status.get("replicas", 0) == desired
    )


def cr_ready(cr: dict[str, Any] | None) -> bool:
    """Ready=True for the CR's current generation."""
    if not cr:
        return False
    status = cr.get("status") or {}
    return (
        status.get("observedGeneration") == cr["metadata"].get("generation")
        and condition(cr, "Ready").get("status") == "True"
    )


def controller_ref(obj: dict[str, Any]) -> dict[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


# --------------------------------------------------------------------------------------- CR builders
def local_model_cr(name: str, *, node_selector: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A ModelDeployment of a local model with an inline pipeline config (needs no MLflow)."""
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"local": {"path": "/models/demo/model.py:Factory"}},
            "config": {"inline": pipeline_config(scale=1.0)},
            **spec,
        },
    }
    if node_selector:
        body["spec"]["nodeSelector"] = node_selector
    return body


def mlflow_model_cr(name: str, model_name: str, *, node_selector: dict[str, str] | None = None,
                    **mlflow_source: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"mlflow": {"name": model_name, **mlflow_source}}},
    }
    if node_selector:
        body["spec"]["nodeSelector"] = node_selector
    return body


def pipeline_config(scale: float) -> dict[str, Any]:
    """A model_manager (legacy form) pipeline config: p4p in, a formula transformer, p4p out. `scale`
    changes the input formula, i.e. the config text (an edit that must roll the Deployment)."""
    pvs = {"in": "E2E:TEST:IN", "out": "E2E:TEST:OUT"}
    return {
        "deployment": {"type": "continuous"},
        "input_data": {
            "get_method": "p4p",
            "config": {"variables": {pvs["in"]: {"proto": "pva", "name": pvs["in"]}}},
        },
        "input_data_to_model": {
            "type": "SimpleTransformer",
            "config": {"symbols": [pvs["in"]], "variables": {"x": {"formula": f"{pvs['in']} * {scale}"}}},
        },
        "outputs_model": {"config": {"variables": {"y": {"type": "scalar"}}}},
        "output_model_to_data": {
            "type": "SimpleTransformer",
            "config": {"symbols": ["y"], "variables": {pvs["out"]: {"formula": "y"}}},
        },
        "output_data_to": {
            "put_method": "p4p",
            "config": {"variables": {pvs["out"]: {"proto": "pva", "name": pvs["out"]}}},
        },
    }


# ----------------------------------------------------------------------------------- operator process
class OperatorProcess:
    """`python -m model_deploy.operator` as a subprocess watching one namespace, logging to a file."""

    def __init__(
        self,
        *,
        kubeconfig: str,
        namespace: str,
        workdir: Path,
        mlflow_uri: str | None,
        poll: bool = False,
        poll_interval: float = 1.0,
        resync_seconds: float | None = None,
        extra_env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        name: str = "operator",
    ):
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mlflow_uri = mlflow_uri
        self.poll = poll
        self.poll_interval = poll_interval
        self.resync_seconds = resync_seconds
        self.extra_env = dict(extra_env or {})
        # Passed on to `kopf run`; MDO_E2E_OPERATOR_ARGS="--verbose" turns on kopf's debug log for a run.
        self.extra_args = list(extra_args or []) + shlex.split(os.environ.get("MDO_E2E_OPERATOR_ARGS", ""))
        self.name = name
        self.log_path = self.workdir / f"{name}.log"
        self.metrics_port = 0
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def env(self) -> dict[str, str]:
        # Nothing MDO_* or MLflow-related leaks in from the test runner's environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MDO_", "MLFLOW_"))}
        self.metrics_port = free_port()
        env.update(
            {
                "KUBECONFIG": self.kubeconfig,
                "MDO_NAMESPACE": self.namespace,
                "MDO_WATCH_NAMESPACES": json.dumps([self.namespace]),
                "MDO_MLFLOW_POLL_ENABLED": "true" if self.poll else "false",
                "MDO_MLFLOW_POLL_INTERVAL_SECONDS": str(self.poll_interval),
                "MDO_MLFLOW_BACKOFF_INITIAL_SECONDS": "0.5",
                "MDO_MLFLOW_BACKOFF_MAX_SECONDS": "2",
                "MDO_METRICS_PORT": str(self.metrics_port),
                "MDO_LIVENESS_PORT": str(free_port()),
                "MDO_MLFLOW_REQUEST_TIMEOUT_SECONDS": "5",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.mlflow_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
            env["MDO_MLFLOW_TRACKING_URI"] = self.mlflow_uri
        if self.resync_seconds is not None:
            env["MDO_STATUS_RESYNC_SECONDS"] = str(self.resync_seconds)
        env.update(self.extra_env)
        return env

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 90.0) -> "OperatorProcess":
        """Start and wait until the operator's health endpoint answers (its startup handler ran)."""
        if self.alive:
            return self
        env = self.env()
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts + 1} at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            # Its own session: kill() can signal exactly this process group. cwd is a scratch dir so any
            # file the MLflow client might create lands there, not in the repository.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "model_deploy.operator", *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir, start_new_session=True,
            )
        self.starts += 1
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"

        def healthy() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise OperatorExited(f"operator exited with {self.proc and self.proc.returncode}")
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if healthy():
                    return self
            except OperatorExited as exc:
                raise RuntimeError(f"{exc}; log:\n{self.log_tail()}") from None
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"operator not healthy within {timeout:.0f}s; log:\n{self.log_tail()}")

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL)."""
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=timeout)
        self.proc = None

    def kill(self) -> None:
        """A crash: SIGKILL, no cleanup handlers run."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=15)
        self.proc = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 120) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()


class OperatorExited(RuntimeError):
    pass


# ------------------------------------------------------------------- failure reports: operator logs
_ACTIVE_OPERATORS: list[OperatorProcess] = []


class OperatorLogReporter:
    """pytest plugin: a failing test's report gets the log tail of every operator that was running."""

    name = "mdo-operator-logs"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
        report = yield
        if report.failed:
            for operator in list(_ACTIVE_OPERATORS):
                report.sections.append(
                    (f"operator log {operator.name} ({operator.log_path}), last lines", operator.log_tail(200))
                )
        return report


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def cluster(control_plane, pytestconfig) -> Cluster:
    # Registered here rather than as a conftest hook: e2e/conftest.py belongs to the control plane.
    if not pytestconfig.pluginmanager.has_plugin(OperatorLogReporter.name):
        pytestconfig.pluginmanager.register(OperatorLogReporter(), OperatorLogReporter.name)
    return Cluster(control_plane.kubeconfig)


@pytest.fixture(scope="session")
def crd(crd_installed) -> str:
    """The ModelDeployment CRD, applied from crds/ and Established (tests/fixtures/control_plane.py)."""
    return CRD_NAME


def make_namespace(control_plane, cluster: Cluster, prefix: str) -> str:
    name = f"{prefix}-{short_id()}"
    control_plane.kubectl("create", "namespace", name)
    control_plane.kubectl("label", "namespace", name, "mdo-e2e=true")
    # Pods need the namespace's default ServiceAccount (created by the controller-manager).
    wait_for(lambda: cluster.get("serviceaccount", name, "default"), 60, f"default ServiceAccount in {name}")
    return name


def drop_namespace(control_plane, name: str) -> None:
    if os.environ.get("MDO_E2E_KEEP") == "1":
        return
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def namespace(control_plane, cluster, crd) -> Iterator[str]:
    name = make_namespace(control_plane, cluster, "mdo-e2e")
    yield name
    drop_namespace(control_plane, name)


@pytest.fixture(scope="module")
def module_namespace(control_plane, cluster, crd) -> Iterator[str]:
    name = make_namespace(control_plane, cluster, "mdo-e2e-m")
    yield name
    drop_namespace(control_plane, name)


# For operators whose tests need no MLflow: a port nothing listens on (connections are refused at once),
# so the operator never falls back to MLflow's default local store in its working directory.
NO_MLFLOW_URI = "http://127.0.0.1:9"


class OperatorFactory:
    """Starts operator subprocesses; `stop_all()` stops them. Pass mlflow_uri=... for MLflow tests."""

    def __init__(self, kubeconfig: str, workdir: Path):
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.started: list[OperatorProcess] = []

    def __call__(self, namespace: str, **options: Any) -> OperatorProcess:
        options.setdefault("mlflow_uri", NO_MLFLOW_URI)
        options.setdefault("kubeconfig", self.kubeconfig)
        name = options.pop("name", f"operator-{len(self.started) + 1}")
        operator = OperatorProcess(namespace=namespace, workdir=self.workdir / name, name=name, **options)
        self.started.append(operator)
        _ACTIVE_OPERATORS.append(operator)
        return operator.start()

    def stop_all(self) -> None:
        for operator in self.started:
            operator.stop()
            if operator in _ACTIVE_OPERATORS:
                _ACTIVE_OPERATORS.remove(operator)


@pytest.fixture
def operator_factory(control_plane, crd, tmp_path) -> Iterator[OperatorFactory]:
    """Start operator subprocesses for one test (stopped at teardown)."""
    factory = OperatorFactory(control_plane.kubeconfig, tmp_path / "operators")
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def module_operator_factory(control_plane, crd, tmp_path_factory) -> Iterator[OperatorFactory]:
    """Start operator subprocesses shared by one test module."""
    factory = OperatorFactory(control_plane.kubeconfig, tmp_path_factory.mktemp("operators"))
    yield factory
    factory.stop_all()


class MlflowModels:
    """Registered models made by one test in the shared MLflow server; deleted at teardown so that no
    later operator's poller picks up their deployment_type tags."""

    def __init__(self, tracking_uri: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.names: list[str] = []
        self._run_id: str | None = None

    def register(self, name: str, versions: int = 1) -> list[str]:
        """A registered model with `versions` versions (never loaded by the operator: a source URI is enough)."""
        self.client.create_registered_model(name)
        self.names.append(name)
        return [self.add_version(name) for _ in range(versions)]

    def add_version(self, name: str) -> str:
        # MLflow insists that a version's source belongs to a run; the artifact itself never has to exist.
        if self._run_id is None:
            self._run_id = self.client.create_run(experiment_id="0").info.run_id
        version = self.client.create_model_version(
            name, source=f"runs:/{self._run_id}/model", run_id=self._run_id
        )
        return str(version.version)

    def tags(self, name: str) -> dict[str, str]:
        return dict(self.client.get_registered_model(name).tags or {})

    def cleanup(self) -> None:
        for name in self.names:
            try:
                self.client.delete_registered_model(name)
            except Exception:  # noqa: BLE001 - best effort; the model may already be gone
                pass


@pytest.fixture
def mlflow_models(mlflow_server) -> Iterator[MlflowModels]:
    models = MlflowModels(mlflow_server.uri)
    yield models
    models.cleanup()

