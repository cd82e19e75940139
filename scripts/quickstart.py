#!/usr/bin/env python3
"""Quickstart: the whole job, locally, with one command (`make quickstart` / scripts/quickstart.sh).

Brings up, on loopback only and in the run dir (default .run/quickstart/):
  a Kubernetes control plane (e2e/controlplane.py), a real MLflow server, the simulated control system
  (scripts/demo_ioc.py: DEMO:X1, DEMO:X2 inputs and the writable DEMO:Y output), the CRD and the
  operator; registers a demo lume model (y = 2*x1 - x2) with its pv_mappings.yaml in MLflow and tags it
  deployment_type=prod; waits for the operator to create the ModelDeployment and its Deployment, for
  Ready=True and for MLflow's deployment_status=running. No kubelet runs containers here (kwok fakes the
  pods), so it then runs the rendered Deployment's container command locally (args verbatim; mounted
  ConfigMap files materialised into the run dir), shows DEMO:Y following the inputs, prints where to look
  and waits for Ctrl-C, then tears everything down in reverse order.

Flags: --timeout S (fail if outputs are not updating within S seconds), --exit-after S (non-interactive:
tear down S seconds after the outputs updated; for CI), --keep (keep the run dir), --run-dir DIR.
Exit codes: 0 ok, 1 failed (or timed out), 130 interrupted before the stack was up.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# A dev script: reuse the test helpers (control plane, MLflow server, demo model registration) as is.
for _path in (REPO_ROOT / "e2e", REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

DEFAULT_RUN_DIR = REPO_ROOT / ".run" / "quickstart"
MODEL_NAME = "quickstart-demo"
NAMESPACE = "default"
PIPELINE_CONFIG = REPO_ROOT / "examples" / "demo" / "quickstart_pv_mappings.yaml"
DEMO_IOC = REPO_ROOT / "scripts" / "demo_ioc.py"
CRD_DIR = REPO_ROOT / "crds"
CRD_NAME = "modeldeployments.deploy.lume.slac.stanford.edu"
INPUT_PVS = ("DEMO:X1", "DEMO:X2")
OUTPUT_PV = "DEMO:Y"
# Every process the quickstart starts inherits this variable (value: the run dir); that is how a later
# run (and the tests) find stray processes of this run, whatever started them.
RUN_MARKER_ENV = "MDO_QUICKSTART_RUN_DIR"
TOTAL_STEPS = 10
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
POLL_SECONDS = 0.5

# Run as `python -c CODE TRACKING_URI NAME PV_MAPPINGS TIMEOUT`: a subprocess, so MLflow's chatter goes to its
# log and its heavy imports overlap with the control plane's start. Waits for MLflow, registers, prints
# `registered VERSION`.
REGISTER_MODEL_CODE = """
import sys, time, urllib.request
from model_deploy.runtime.demo_models import make_linear_demo_model
from tests.fixtures.demo_models import register_demo_model
uri, name, config, timeout = sys.argv[1:5]
deadline = time.monotonic() + float(timeout)
while True:
    try:
        with urllib.request.urlopen(uri + "/health", timeout=2) as response:
            if response.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"MLflow at {uri} did not answer /health within {float(timeout):.0f}s")
    time.sleep(0.3)
version = register_demo_model(uri, name, make_linear_demo_model(2.0, -1.0), config, alias="champion")
print("registered", version, flush=True)
"""

try:  # loaded up front: nothing may be imported between fork and exec
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _LIBC = None


class QuickstartError(RuntimeError):
    """A step failed; the message says what to look at."""


class Interrupted(Exception):
    """SIGINT/SIGTERM."""


# ------------------------------------------------------------------------------------------- output
def say(text: str = "") -> None:
    print(text, flush=True)


class Progress:
    """Numbered steps: `[3/10] starting MLflow at http://... ok (4.2 s)`; details go on indented lines."""

    def __init__(self, total: int):
        self.total = total
        self.number = 0
        self._line_open = False

    @contextmanager
    def step(self, title: str) -> Iterator["Progress"]:
        self.number += 1
        print(f"[{self.number}/{self.total}] {title} ...", end="", flush=True)
        self._line_open = True
        started = time.monotonic()
        try:
            yield self
        except BaseException as exc:
            outcome = "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "FAILED"
            self._finish(f"{outcome} ({time.monotonic() - started:.1f} s)")
            raise
        self._finish(f"ok ({time.monotonic() - started:.1f} s)")

    def detail(self, text: str) -> None:
        if self._line_open:
            print(flush=True)
            self._line_open = False
        print(f"      {text}", flush=True)

    def _finish(self, outcome: str) -> None:
        if self._line_open:
            print(f" {outcome}", flush=True)
        else:
            print(f"      -> {outcome}", flush=True)
        self._line_open = False


# ------------------------------------------------------------------------------------ processes
def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the quickstart dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    if _LIBC is not None:
        _LIBC.prctl(1, int(signal.SIGKILL), 0, 0, 0)


@dataclass
class Child:
    """A subprocess in its own process group, output to a log file."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        try:  # anything the child left in its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def spawn(name: str, argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"=== {time.strftime('%H:%M:%S')} {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(env), cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)
    return Child(name, proc, log_path)


def processes_with_marker(value: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment has RUN_MARKER_ENV=value."""
    needle = f"{RUN_MARKER_ENV}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if needle not in environ.split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone, or not ours
            continue
        if cmdline:  # zombies have none
            found.append((int(entry.name), cmdline))
    return found


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie has exited; its parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_processes(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `timeout` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        living = [pid for pid in pids if _alive(pid)]
        for pid in living:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(pid) for pid in living):
            time.sleep(0.1)


def minimal_env(**extra: str) -> dict[str, str]:
    """A clean environment for a child: no MLFLOW_/MDO_/EPICS_ settings leak in from the user's shell."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "USER", "TMPDIR")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env[RUN_MARKER_ENV] = os.environ[RUN_MARKER_ENV]
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def stop_mlflow(server: Any, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` s (the fixture waits 15 s; nothing here needs a slow shutdown)."""
    proc = server.proc
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    server.kill()


# MLflow's REST API directly: importing the mlflow client here would cost seconds on the critical path.
def mlflow_set_tag(uri: str, model: str, key: str, value: str) -> None:
    body = json.dumps({"name": model, "key": key, "value": value}).encode()
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/registered-models/set-tag", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def mlflow_model_tags(uri: str, model: str) -> dict[str, str]:
    query = urllib.parse.urlencode({"name": model})
    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/registered-models/get?{query}", timeout=30) as response:
        registered = json.loads(response.read())["registered_model"]
    return {tag["key"]: tag.get("value", "") for tag in registered.get("tags") or []}


# ------------------------------------------------------------------------------------- teardown
class Teardown:
    """Stop callbacks, run last-registered first; each one runs even if an earlier one failed."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, stop: Callable[[], None]) -> None:
        self._steps.append((what, stop))

    def run(self) -> bool:
        ok = True
        while self._steps:
            what, stop = self._steps.pop()
            print(f"[teardown] {what} ...", end="", flush=True)
            started = time.monotonic()
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - keep tearing down the rest
                ok = False
                print(f" failed: {exc}", flush=True)
            else:
                print(f" ok ({time.monotonic() - started:.1f} s)", flush=True)
        return ok


# -------------------------------------------------------------------- pure: the local runtime
@dataclass
class LocalRuntime:
    """How to run a rendered Deployment's runtime container on this machine."""

    argv: list[str]
    env: dict[str, str]
    files: dict[Path, str] = field(default_factory=dict)  # ConfigMap items to write before starting
    directories: list[Path] = field(default_factory=list)  # emptyDir mounts to create
    notes: list[str] = field(default_factory=list)  # every deviation from the container, for the user
    metrics_port: int | None = None


def runtime_container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    if not containers:
        raise QuickstartError("the rendered Deployment has no containers")
    return next((c for c in containers if c.get("name") == "runtime"), containers[0])


def _rewrite_path(value: str, mounts: Mapping[str, Path]) -> str | None:
    """`value` with a mount path prefix replaced by its local directory; None if it is under no mount."""
    for mount_path in sorted(mounts, key=len, reverse=True):  # the most specific mount wins
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(mounts[mount_path]) + value[len(mount_path.rstrip("/")):]
    return None


def local_runtime(
    deployment: Mapping[str, Any],
    config_maps: Mapping[str, Mapping[str, Any]],
    run_dir: Path,
    venv_bin: Path,
    extra_env: Mapping[str, str],
    base_env: Mapping[str, str],
) -> LocalRuntime:
    """Translate the Deployment's runtime container into a local command (pure: writes nothing).

    The command and args are kept verbatim except where they point into a mounted volume: ConfigMap
    volumes are materialised under <run_dir>/mounts/<mount path>, emptyDirs become directories there,
    and paths (in args and env values) are rewritten accordingly. `extra_env` is added (the IOC's
    EPICS_PVA_* settings). Everything changed is listed in `notes`.
    """
    container = runtime_container(deployment)
    pod_spec = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes") or []}
    mount_root = run_dir / "mounts"
    result = LocalRuntime(argv=[], env=dict(base_env))
    mounts: dict[str, Path] = {}

    for mount in container.get("volumeMounts") or []:
        mount_path, volume = mount["mountPath"], volumes.get(mount["name"], {})
        local_dir = mount_root / mount_path.lstrip("/")
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            data = (config_maps.get(name) or {}).get("data") or {}
            items = volume["configMap"].get("items") or [{"key": key, "path": key} for key in data]
            for item in items:
                if item["key"] not in data:
                    raise QuickstartError(f"ConfigMap {name} has no key {item['key']!r} (mounted at {mount_path})")
                result.files[local_dir / item["path"]] = data[item["key"]]
            mounts[mount_path] = local_dir
            result.notes.append(f"ConfigMap {name} (mounted at {mount_path}) materialised from the API server "
                                f"into {local_dir}")
        elif "emptyDir" in volume:
            mounts[mount_path] = local_dir
            result.directories.append(local_dir)
        else:
            result.notes.append(f"volume {mount['name']} at {mount_path} is not available locally; skipped")

    command = list(container.get("command") or [])
    if not command:
        raise QuickstartError("the runtime container has no command (the image default is not known here)")
    local_executable = venv_bin / command[0]
    if local_executable.exists():
        result.notes.append(f"{command[0]} -> {local_executable} (the image's executable, from the venv)")
        command[0] = str(local_executable)
    args = []
    for arg in container.get("args") or []:
        rewritten = _rewrite_path(arg, mounts)
        if rewritten is not None:
            result.notes.append(f"argument {arg} -> {rewritten}")
        args.append(rewritten if rewritten is not None else arg)
    result.argv = command + args

    for entry in container.get("env") or []:
        name = entry["name"]
        if "value" in entry:
            value = str(entry["value"])
            rewritten = _rewrite_path(value, mounts)
            if rewritten is not None:
                result.notes.append(f"env {name}={value} -> {rewritten}")
                value = rewritten
            result.env[name] = value
            continue
        ref = (entry.get("valueFrom") or {}).get("configMapKeyRef")
        data = (config_maps.get(ref["name"]) or {}).get("data") or {} if ref else {}
        if ref and ref["key"] in data:
            result.env[name] = data[ref["key"]]
        else:
            result.notes.append(f"env {name} comes from {entry.get('valueFrom')}; not available locally, skipped")
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref and ref["name"] in config_maps:
            result.env.update((config_maps[ref["name"]].get("data") or {}))
        else:
            result.notes.append(f"envFrom {source} not available locally; skipped")
    for name, value in extra_env.items():
        result.env[name] = value
    if extra_env:
        result.notes.append("added " + " ".join(f"{k}={v}" for k, v in extra_env.items()))

    if "--metrics-port" in args:
        index = args.index("--metrics-port")
        if index + 1 < len(args) and args[index + 1].isdigit():
            result.metrics_port = int(args[index + 1])
    return result


def replace_metrics_port(argv: list[str], port: int) -> list[str]:
    index = argv.index("--metrics-port")
    return argv[: index + 1] + [str(port)] + argv[index + 2:]


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------------- the stack
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="quickstart",
        description="Bring up a local stack (Kubernetes control plane, MLflow, a simulated control system, the "
                    "operator), deploy a demo model from MLflow and show its output PV updating. Ctrl-C tears down.",
    )
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="fail (exit 1) if the outputs are not updating within this many seconds (default 600)")
    parser.add_argument("--exit-after", type=float, default=None, metavar="S",
                        help="non-interactive: tear down S seconds after the outputs started updating")
    parser.add_argument("--keep", action="store_true", help="keep the run dir (logs, MLflow data) afterwards")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                        help=f"where everything lives (default {DEFAULT_RUN_DIR.relative_to(REPO_ROOT)})")
    parser.add_argument("--samples", type=int, default=10, help="output samples to print (default 10)")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.exit_after is not None and args.exit_after < 0:
        parser.error("--exit-after must be >= 0")
    if args.samples < 2:
        parser.error("--samples must be at least 2 (one value does not show an update)")
    args.run_dir = args.run_dir.resolve()
    return args


class Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


def wait_until(check: Callable[[], Any], deadline: Deadline, what: str,
               alive: Callable[[], None] = lambda: None) -> Any:
    """Poll `check` until truthy (returned); `alive` raises if a process we depend on died. Errors from
    `check` count as "not yet" (an API server or MLflow still starting); the last one is reported."""
    last_error: Exception | None = None
    while True:
        alive()
        try:
            value = check()
        except Exception as exc:  # noqa: BLE001 - reported if the deadline passes
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() >= deadline.end:
            cause = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise QuickstartError(f"--timeout {deadline.seconds:.0f}s reached while {what}{cause}")
        time.sleep(min(POLL_SECONDS, deadline.left()))


class Quickstart:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.run_dir: Path = args.run_dir
        self.logs = self.run_dir / "logs"
        self.progress = Progress(TOTAL_STEPS)
        self.teardown = Teardown()
        self.deadline = Deadline(args.timeout)
        self.venv_bin = Path(sys.executable).parent
        self.children: list[Child] = []
        self.cp: Any = None
        self.mlflow: Any = None
        self.mlflow_boot_error: BaseException | None = None
        self.ioc_env: dict[str, str] = {}
        self.ioc_port = 0
        self.operator_metrics_port = 0
        self.runtime_metrics_port: int | None = None
        self.cr_name = MODEL_NAME
        self.up = False  # the outputs were seen updating

    # -- helpers -----------------------------------------------------------------------------------
    def start_child(self, name: str, argv: list[str], env: Mapping[str, str]) -> Child:
        slug = name.replace(" ", "-")
        child = spawn(name, argv, env, self.logs / f"{slug}.log", self.run_dir / slug)
        self.children.append(child)
        self.teardown.add(f"stopping the {name} (pid {child.proc.pid})", child.stop)
        self._record_pid(name, child.proc.pid)
        return child

    def _record_pid(self, name: str, pid: int) -> None:
        path = self.run_dir / "pids.json"
        pids = json.loads(path.read_text()) if path.exists() else {}
        pids[name] = pid
        path.write_text(json.dumps(pids, indent=2))

    def require_alive(self, *children: Child) -> Callable[[], None]:
        def check() -> None:
            for child in children:
                if not child.alive:
                    raise QuickstartError(f"the {child.name} exited with {child.proc.returncode}; "
                                          f"last lines of {child.log_path}:\n{child.log_tail()}")
        return check

    def kubectl_json(self, *args: str) -> dict[str, Any] | None:
        result = self.cp.kubectl(*args, "-o", "json", check=False, timeout=30)
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)

    # -- steps -------------------------------------------------------------------------------------
    def run(self) -> None:
        self.prepare_run_dir()
        # MLflow, the IOC and the model registration (its MLflow + lume-model imports are the slowest part)
        # boot in the background while the control plane starts; their steps below wait for them.
        mlflow_boot = self.launch_mlflow()
        ioc = self.launch_ioc()
        registration = self.launch_registration()
        self.start_control_plane()
        self.wait_for_mlflow(mlflow_boot)
        self.wait_for_ioc(ioc)
        self.install_crd()
        operator = self.start_operator()
        version = self.register_model(registration)
        self.deploy_and_wait(operator, version)
        runtime = self.start_runtime()
        self.show_outputs(operator, runtime)
        self.print_where_to_look()
        self.wait_for_exit([operator, runtime, *[c for c in self.children if c.name == "demo IOC"]])

    def prepare_run_dir(self) -> None:
        with self.progress.step(f"preparing the run dir {self.run_dir}") as p:
            stale = processes_with_marker(str(self.run_dir))
            if stale:
                p.detail(f"stopping {len(stale)} process(es) left by an earlier run: "
                         + ", ".join(f"{pid} ({cmd.split()[0].rsplit('/', 1)[-1]})" for pid, cmd in stale))
                kill_processes([pid for pid, _ in stale])
            if self.run_dir.exists():
                p.detail("removing the previous run's files")
                shutil.rmtree(self.run_dir)
            self.logs.mkdir(parents=True)
            os.environ[RUN_MARKER_ENV] = str(self.run_dir)
            self.teardown.add("checking that no process of this run is left",
                              self.check_no_stray_processes)

    def check_no_stray_processes(self) -> None:
        stray = processes_with_marker(str(self.run_dir))
        if stray:
            kill_processes([pid for pid, _ in stray])
            raise QuickstartError(f"{len(stray)} stray process(es) had to be killed: "
                                  + "; ".join(f"{pid}: {cmd[:80]}" for pid, cmd in stray))

    def start_control_plane(self) -> None:
        from controlplane import ControlPlane, ControlPlaneError

        cp = ControlPlane(self.run_dir / "control-plane", use_existing=False)
        try:
            cp.ensure_binaries()
        except ControlPlaneError as exc:
            raise QuickstartError(f"{exc} (make quickstart does that for you)") from None
        with self.progress.step("starting the Kubernetes control plane (etcd, kube-apiserver, "
                                "controller-manager, scheduler, kwok fake node)") as p:
            self.teardown.add("stopping the Kubernetes control plane", cp.stop)
            cp.start(timeout=max(30.0, min(180.0, self.deadline.left())))
            self.cp = cp
            p.detail(f"API server {cp.server}; kubeconfig {cp.kubeconfig}")

    def launch_mlflow(self) -> threading.Thread:
        from tests.fixtures.mlflow_server import MlflowServer

        server = self.mlflow = MlflowServer(self.run_dir / "mlflow")

        def boot() -> None:
            try:
                server.start(timeout=max(30.0, min(180.0, self.deadline.left())))
            except BaseException as exc:  # noqa: BLE001 - reported by wait_for_mlflow
                self.mlflow_boot_error = exc

        thread = threading.Thread(target=boot, name="mlflow-boot", daemon=True)
        thread.start()

        def stop() -> None:
            # The boot thread spawns the server right away; wait for that so nothing starts after teardown.
            deadline = time.monotonic() + 10
            while server.proc is None and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            stop_mlflow(server)
            thread.join(timeout=5)

        self.teardown.add("stopping MLflow", stop)
        return thread

    def wait_for_mlflow(self, boot: threading.Thread) -> None:
        with self.progress.step(f"starting MLflow at {self.mlflow.uri} (sqlite + local artifacts in the run dir; "
                                "booted alongside the control plane)"):
            wait_until(lambda: not boot.is_alive(), self.deadline, "waiting for MLflow to start")
            if self.mlflow_boot_error is not None:
                raise QuickstartError(f"MLflow did not start: {self.mlflow_boot_error}")
            self._record_pid("mlflow", self.mlflow.proc.pid)

    def launch_ioc(self) -> Child:
        from tests.fixtures.mlflow_server import free_port

        self.ioc_port = free_port()
        argv = [sys.executable, str(DEMO_IOC), "--port", str(self.ioc_port), "--broadcast-port", str(free_port())]
        return self.start_child("demo IOC", argv, minimal_env())

    def wait_for_ioc(self, child: Child) -> None:
        with self.progress.step(f"starting the demo IOC on 127.0.0.1:{self.ioc_port} "
                                f"({', '.join(INPUT_PVS)} inputs, {OUTPUT_PV} writable output)") as p:
            def announced() -> dict[str, str] | None:
                lines = child.log_path.read_text(errors="replace").splitlines()
                if not any(line.startswith("ready ") for line in lines):
                    return None
                return dict(line.split("=", 1) for line in lines if line.startswith("EPICS_PVA_"))

            self.ioc_env = wait_until(announced, self.deadline, "waiting for the demo IOC",
                                      self.require_alive(child))
            p.detail(" ".join(f"{k}={v}" for k, v in self.ioc_env.items()))

    def install_crd(self) -> None:
        with self.progress.step("installing the ModelDeployment CRD (kubectl apply -f crds/)"):
            self.cp.kubectl("apply", "-f", str(CRD_DIR))
            self.cp.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s", timeout=90)

    def start_operator(self) -> Child:
        from tests.fixtures.mlflow_server import free_port

        self.operator_metrics_port = free_port()
        env = minimal_env(
            KUBECONFIG=self.cp.kubeconfig,
            MDO_MLFLOW_TRACKING_URI=self.mlflow.uri,
            MLFLOW_TRACKING_URI=self.mlflow.uri,
            MDO_NAMESPACE=NAMESPACE,
            MDO_MLFLOW_POLL_INTERVAL_SECONDS="2",
            MDO_STATUS_RESYNC_SECONDS="10",
            MDO_METRICS_PORT=str(self.operator_metrics_port),
            MDO_LIVENESS_PORT=str(free_port()),
            # The demo is meant to write DEMO:Y; without this the runtime would run dry (no -p).
            MDO_DEFAULT_PUBLISH="true",
        )
        with self.progress.step("starting the operator (python -m model_deploy.operator; MLflow poll every 2 s, "
                                "MDO_DEFAULT_PUBLISH=true)") as p:
            child = self.start_child("operator", [sys.executable, "-m", "model_deploy.operator"], env)
            url = f"http://127.0.0.1:{self.operator_metrics_port}/healthz"

            def healthy() -> bool:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return response.status == 200

            wait_until(healthy, self.deadline, "waiting for the operator's /healthz", self.require_alive(child))
            p.detail(f"log {child.log_path}; metrics http://127.0.0.1:{self.operator_metrics_port}/metrics")
        return child

    def launch_registration(self) -> Child:
        env = minimal_env(PYTHONPATH=str(REPO_ROOT))
        argv = [sys.executable, "-c", REGISTER_MODEL_CODE, self.mlflow.uri, MODEL_NAME, str(PIPELINE_CONFIG),
                str(self.deadline.left())]
        return self.start_child("model registration", argv, env)

    def register_model(self, registration: Child) -> str:
        with self.progress.step(f"registering the demo model {MODEL_NAME!r} (lume-model, y = 2*x1 - x2) with "
                                f"its pv_mappings.yaml in MLflow") as p:
            wait_until(lambda: registration.proc.poll() is not None, self.deadline,
                       "registering the demo model in MLflow")
            lines = registration.log_path.read_text(errors="replace").splitlines()
            version = next((line.split()[1] for line in reversed(lines) if line.startswith("registered ")), None)
            if registration.proc.returncode != 0 or version is None:
                raise QuickstartError(f"registering the demo model failed (exit {registration.proc.returncode}); "
                                      f"last lines of {registration.log_path}:\n{registration.log_tail()}")
            p.detail(f"version {version} (alias champion); pipeline config "
                     f"{PIPELINE_CONFIG.relative_to(REPO_ROOT)} logged as {MODEL_NAME}/pv_mappings.yaml "
                     f"(log {registration.log_path})")
        return version

    def deploy_and_wait(self, operator: Child, version: str) -> None:
        from model_deploy.operator.mlflow_sync import deployment_name_for_model

        self.cr_name = deployment_name_for_model(MODEL_NAME)
        alive = self.require_alive(operator)
        with self.progress.step(f"setting the MLflow tag deployment_type=prod on {MODEL_NAME!r}; waiting for "
                                f"the operator") as p:
            mlflow_set_tag(self.mlflow.uri, MODEL_NAME, "deployment_type", "prod")
            started = time.monotonic()

            def elapsed() -> str:
                return f"after {time.monotonic() - started:.1f} s"

            wait_until(lambda: self.kubectl_json("get", "modeldeployment", self.cr_name, "-n", NAMESPACE),
                       self.deadline, "waiting for the operator to create the ModelDeployment", alive)
            p.detail(f"ModelDeployment {NAMESPACE}/{self.cr_name} created by the MLflow poller ({elapsed()})")
            deployment = wait_until(lambda: self.kubectl_json("get", "deployment", self.cr_name, "-n", NAMESPACE),
                                    self.deadline, "waiting for the Deployment", alive)
            container = runtime_container(deployment)
            p.detail(f"Deployment {NAMESPACE}/{self.cr_name} rendered ({elapsed()}): "
                     f"{shlex.join(container['command'] + container['args'])}")

            def ready() -> dict[str, Any] | None:
                cr = self.kubectl_json("get", "modeldeployment", self.cr_name, "-n", NAMESPACE) or {}
                for item in (cr.get("status") or {}).get("conditions") or []:
                    if item.get("type") == "Ready" and item.get("status") == "True":
                        return item
                return None

            condition = wait_until(ready, self.deadline, "waiting for the ModelDeployment to be Ready", alive)
            p.detail(f"Ready=True ({elapsed()}): {condition.get('message')} (kwok runs a fake pod)")

            def running() -> dict[str, str] | None:
                tags = mlflow_model_tags(self.mlflow.uri, MODEL_NAME)
                return tags if tags.get("deployment_status") == "running" else None

            tags = wait_until(running, self.deadline, "waiting for the MLflow tag deployment_status=running", alive)
            p.detail(f"MLflow tags ({elapsed()}): deployment_status=running, "
                     f"deployment_version={tags.get('deployment_version')}, "
                     f"deployment_name={tags.get('deployment_name')}, "
                     f"deployment_timestamp={tags.get('deployment_timestamp')}")
            if tags.get("deployment_version") != version:
                raise QuickstartError(f"MLflow says version {tags.get('deployment_version')} is deployed, "
                                      f"expected {version}")

    def start_runtime(self) -> Child:
        with self.progress.step("running the rendered Deployment's container command locally "
                                "(no kubelet here: kwok pods run nothing)") as p:
            deployment = self.kubectl_json("get", "deployment", self.cr_name, "-n", NAMESPACE)
            if deployment is None:
                raise QuickstartError(f"Deployment {NAMESPACE}/{self.cr_name} disappeared")
            volumes = deployment["spec"]["template"]["spec"].get("volumes") or []
            config_maps = {}
            for volume in volumes:
                if "configMap" in volume:
                    name = volume["configMap"]["name"]
                    config_maps[name] = self.kubectl_json("get", "configmap", name, "-n", NAMESPACE) or {}
            local = local_runtime(deployment, config_maps, self.run_dir, self.venv_bin, self.ioc_env,
                                  minimal_env())
            cache_dir = local.env.get("MODEL_CACHE_DIR")
            for directory in local.directories:
                directory.mkdir(parents=True, exist_ok=True)
            for path, text in local.files.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            if not any(path.startswith("/etc/") for path in local.argv):
                p.detail("no -c: the runtime reads the pv_mappings.yaml logged with the model in MLflow")
            argv = local.argv
            if local.metrics_port is not None and not port_is_free(local.metrics_port):
                from tests.fixtures.mlflow_server import free_port

                port = free_port()
                local.notes.append(f"--metrics-port {local.metrics_port} is taken on this machine -> {port}")
                argv = replace_metrics_port(argv, port)
                local.metrics_port = port
            self.runtime_metrics_port = local.metrics_port
            for note in local.notes:
                p.detail(f"changed for local use: {note}")
            if cache_dir:
                p.detail(f"model cache MODEL_CACHE_DIR={cache_dir}")
            rendered_env = " ".join(f"{e['name']}={e.get('value', '<from ' + str(e.get('valueFrom')) + '>')}"
                                    for e in runtime_container(deployment).get("env") or [])
            p.detail(f"rendered env: {rendered_env}")
            p.detail(f"$ {shlex.join(argv)}")
            child = self.start_child("runtime", argv, local.env)
            p.detail(f"log {child.log_path}")
        return child

    def show_outputs(self, operator: Child, runtime: Child) -> None:
        from p4p.client.thread import Context

        alive = self.require_alive(operator, runtime, *[c for c in self.children if c.name == "demo IOC"])
        conf = {**self.ioc_env, "EPICS_PVA_AUTO_ADDR_LIST": "NO"}
        context = Context("pva", conf=conf, useenv=False)
        try:
            with self.progress.step(f"waiting for the runtime to write {OUTPUT_PV} (model load first)") as p:
                initial = float(context.get(OUTPUT_PV, timeout=5))
                wait_until(lambda: float(context.get(OUTPUT_PV, timeout=5)) != initial, self.deadline,
                           f"waiting for the runtime to write {OUTPUT_PV}", alive)
                p.detail(f"{OUTPUT_PV} = 2*{INPUT_PVS[0]} - {INPUT_PVS[1]} (the demo model), sampled every 0.5 s:")
                values = []
                for _ in range(self.args.samples):
                    alive()
                    x1, x2, y = (float(v) for v in context.get([*INPUT_PVS, OUTPUT_PV], timeout=5))
                    values.append(y)
                    p.detail(f"  {INPUT_PVS[0]}={x1:+.4f}  {INPUT_PVS[1]}={x2:+.4f}  ->  {OUTPUT_PV}={y:+.4f}")
                    time.sleep(0.5)
                distinct = len(set(values))
                if distinct < 2:
                    raise QuickstartError(f"{OUTPUT_PV} did not change over {len(values)} samples; see "
                                          f"{runtime.log_path}")
                p.detail(f"outputs updating: {OUTPUT_PV} took {distinct} distinct values in {len(values)} samples")
                self.up = True
        except (QuickstartError, Interrupted):
            raise
        except Exception as exc:  # p4p timeouts/disconnects: say which PVs
            raise QuickstartError(f"reading {', '.join(INPUT_PVS)}, {OUTPUT_PV} from the demo IOC failed: "
                                  f"{type(exc).__name__}: {exc}") from None
        finally:
            context.close()

    def print_where_to_look(self) -> None:
        kubectl_dir = Path(self.cp.bin("kubectl")).parent
        pva = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.ioc_env.items())
        say()
        say("Where to look:")
        say(f"  MLflow UI        {self.mlflow.uri}/#/models/{MODEL_NAME}  (tags deployment_status, "
            "deployment_version, ...)")
        say(f"  Kubernetes       export KUBECONFIG={self.cp.kubeconfig} PATH={kubectl_dir}:$PATH; "
            "kubectl get modeldeployments -A")
        say(f"  Control system   {pva} {self.venv_bin / 'python'} -m p4p.client.cli monitor {OUTPUT_PV}")
        if self.runtime_metrics_port:
            say(f"  Runtime metrics  http://127.0.0.1:{self.runtime_metrics_port}/metrics")
        say(f"  Operator metrics http://127.0.0.1:{self.operator_metrics_port}/metrics")
        say(f"  Logs             {self.logs}/  (control plane: {self.run_dir / 'control-plane' / 'logs'}/)")
        say()

    def wait_for_exit(self, watched: list[Child]) -> None:
        alive = self.require_alive(*watched)
        if self.args.exit_after is not None:
            say(f"Running; tearing down in {self.args.exit_after:g} s (--exit-after).")
            end = time.monotonic() + self.args.exit_after
            while time.monotonic() < end:
                alive()
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            return
        say("Running. Press Ctrl-C to stop and tear everything down.")
        while True:
            alive()
            time.sleep(1.0)


# ------------------------------------------------------------------------------------------ main
def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """One quickstart per run dir: a second one would tear down the first one's processes."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir.parent / f".{run_dir.name}.lock"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise QuickstartError(f"another quickstart (pid {lock.read().strip() or '?'}) is using {run_dir}; "
                                  "stop it with Ctrl-C, or pass --run-dir for a second stack") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def finish_run_dir(args: argparse.Namespace, code: int) -> None:
    """Remove the run dir after a clean run; keep it (the logs) with --keep or after a failure."""
    if not args.run_dir.exists():
        return
    if args.keep or code not in (EXIT_OK, EXIT_INTERRUPTED):
        say(f"[teardown] kept {args.run_dir} ({'--keep' if args.keep else 'for the logs'})")
        return
    print(f"[teardown] removing {args.run_dir} (--keep keeps it) ...", end="", flush=True)
    shutil.rmtree(args.run_dir, ignore_errors=True)
    print(" ok", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupted)
    quickstart = Quickstart(args)
    code = EXIT_OK
    started = time.monotonic()
    try:
        with run_dir_lock(args.run_dir):
            try:
                quickstart.run()
            except Interrupted as exc:
                say(f"\n{exc}: stopping.")
                code = EXIT_OK if quickstart.up else EXIT_INTERRUPTED
            except QuickstartError as exc:
                say(f"\nquickstart: error: {exc}")
                code = EXIT_FAILED
            except Exception as exc:  # noqa: BLE001 - still tear down, and say what broke
                say(f"\nquickstart: unexpected error: {type(exc).__name__}: {exc}")
                code = EXIT_FAILED
            finally:
                # A second Ctrl-C must not cut the teardown short.
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_IGN)
                if not quickstart.teardown.run():
                    code = code or EXIT_FAILED
                finish_run_dir(args, code)
    except QuickstartError as exc:
        say(f"quickstart: error: {exc}")
        return EXIT_FAILED
    say(f"quickstart: {'done' if code == EXIT_OK else 'exiting with ' + str(code)} "
        f"after {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
