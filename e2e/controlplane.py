#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback, for end-to-end tests.

Runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
(fake nodes whose pods "run" without a container runtime) as local
processes, from the binaries that ``e2e/build-control-plane.sh`` builds.
Standard library only (plus the ``openssl`` CLI for certificates).

Library use (e.g. from a pytest fixture)::

    from controlplane import ControlPlane
    cp = ControlPlane(run_dir="/tmp/cp")     # or ControlPlane() for a temp dir
    cp.start()
    subprocess.run(["kubectl", "get", "nodes"], env=cp.env())
    cp.restart_apiserver()
    cp.stop()

Command line::

    python e2e/controlplane.py up --dir /tmp/cp      # prints KUBECONFIG=...
    python e2e/controlplane.py status --dir /tmp/cp
    python e2e/controlplane.py down --dir /tmp/cp

Existing cluster (e.g. kind): with ``MDO_E2E_USE_EXISTING_CLUSTER=1`` and
``KUBECONFIG`` set, ``start()``/``stop()`` do nothing and the given cluster
is used; ``restart_apiserver()`` raises ``Unsupported``.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
DEFAULT_BIN = Path(
    os.environ.get("MDO_E2E_BIN")
    or Path.home() / ".cache" / "model-deploy-operator" / "bin"
)
KWOK_VERSION = os.environ.get("MDO_KWOK_VERSION", "v0.8.0")
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.0.0.0/24"
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
)
# Component start order; stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ControlPlaneError(RuntimeError):
    """The control plane failed to start or to become ready."""


class Unsupported(RuntimeError):
    """The operation is not possible against an existing cluster."""


def use_existing_cluster() -> bool:
    return os.environ.get("MDO_E2E_USE_EXISTING_CLUSTER", "") in ("1", "true", "yes") and bool(
        os.environ.get("KUBECONFIG")
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {r.stderr}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


try:  # loaded up front: nothing may be imported between fork and exec
    import ctypes

    _LIBC = ctypes.CDLL(None, use_errno=True)
except Exception:  # noqa: BLE001
    _LIBC = None


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent (thread) dies, so
    a killed pytest leaves no control plane behind (Linux PR_SET_PDEATHSIG)."""
    if _LIBC is not None:
        _LIBC.prctl(1, int(signal.SIGKILL), 0, 0, 0)


def _cmdline(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok.

    All state (certs, etcd data, logs, kubeconfigs, ``state.json``) lives in
    ``run_dir``. Every component runs in its own process group and is stopped
    with SIGTERM, then SIGKILL after ``stop_timeout`` seconds.
    """

    def __init__(
        self,
        run_dir: Optional[os.PathLike | str] = None,
        bin_dir: Optional[os.PathLike | str] = None,
        *,
        node_name: str = "kwok-node-0",
        node_labels: Optional[Dict[str, str]] = None,
        node_cpu: str = "32",
        node_memory: str = "256Gi",
        node_pods: str = "1000",
        verbosity: int = 1,
        stop_timeout: float = 10.0,
        die_with_parent: bool = True,
        use_existing: Optional[bool] = None,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self.use_existing = use_existing_cluster() if use_existing is None else use_existing
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir else None
        self.bin_dir = Path(bin_dir) if bin_dir else DEFAULT_BIN
        self.node_name = node_name
        self.node_labels = {"type": "kwok"} if node_labels is None else dict(node_labels)
        self.node_cpu, self.node_memory, self.node_pods = node_cpu, node_memory, node_pods
        self.verbosity = verbosity
        self.stop_timeout = stop_timeout
        self.die_with_parent = die_with_parent
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.ports: Dict[str, int] = {}
        self.pids: Dict[str, int] = {}
        self._procs: Dict[str, subprocess.Popen] = {}
        self._started = False
        self._atexit = False

    # ------------------------------------------------------------- paths
    @property
    def kubeconfig(self) -> str:
        """Path of the admin kubeconfig (client cert in group system:masters)."""
        if self.use_existing:
            return os.environ["KUBECONFIG"]
        assert self.run_dir is not None, "start() first"
        return str(self.run_dir / "kubeconfig")

    @property
    def server(self) -> str:
        """https URL of the kube-apiserver (local mode only)."""
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def fake_pods(self) -> bool:
        """True when pods are run by kwok (no images are pulled or run)."""
        return not self.use_existing

    @property
    def node_selector(self) -> Dict[str, str]:
        """nodeSelector that puts pods onto the kwok node ({} on an existing cluster)."""
        return {} if self.use_existing else dict(self.node_labels)

    def bin(self, name: str) -> str:
        """Path of a binary: the cache dir, else $PATH (existing-cluster mode)."""
        p = self.bin_dir / name
        if p.exists():
            return str(p)
        found = shutil.which(name)
        if found:
            return found
        raise ControlPlaneError(
            f"{name} not found in {self.bin_dir} nor on PATH; run: bash e2e/build-control-plane.sh"
        )

    def missing_binaries(self) -> List[str]:
        return [b for b in BINARIES if not (self.bin_dir / b).exists()]

    def ensure_binaries(self, build: bool = False) -> None:
        """Raise if a binary is missing; with build=True run the (cached) build first."""
        if self.use_existing:
            return
        if build and self.missing_binaries():
            env = dict(os.environ, MDO_E2E_BIN=str(self.bin_dir))
            subprocess.run(["bash", str(HERE / "build-control-plane.sh")], env=env, check=True)
        missing = self.missing_binaries()
        if missing:
            raise ControlPlaneError(
                f"missing {missing} in {self.bin_dir}; run: bash e2e/build-control-plane.sh"
            )

    def env(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """Environment with KUBECONFIG set and the binary dir first on PATH."""
        e = dict(os.environ if base is None else base)
        e["KUBECONFIG"] = self.kubeconfig
        e["PATH"] = f"{self.bin_dir}{os.pathsep}{e.get('PATH', '')}"
        return e

    # ----------------------------------------------------------- helpers
    def kubectl(
        self, *args: str, input: Optional[str] = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run kubectl against this cluster; returns the CompletedProcess (text)."""
        r = subprocess.run(
            [self.bin("kubectl"), "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run helm against this cluster."""
        r = subprocess.run(
            [self.bin("helm"), "--kubeconfig", self.kubeconfig, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
        )
        if check and r.returncode != 0:
            raise ControlPlaneError(f"helm {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def log_path(self, component: str) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "logs" / f"{component}.log"

    def logs_tail(self, component: str, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path(component).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------ certs
    def _gen_certs(self) -> None:
        pki = self.run_dir / "pki"
        if (pki / ".complete").exists():
            return
        pki.mkdir(parents=True, exist_ok=True)
        o = lambda *a: _openssl(*a, cwd=pki)  # noqa: E731
        o("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
          "-days", "3650", "-subj", "/CN=mdo-e2e-ca")
        o("genrsa", "-out", "sa.key", "2048")
        o("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")

        def leaf(name: str, subj: str, ext: str) -> None:
            (pki / f"{name}.ext").write_text(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n" + ext
            )
            o("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
              "-subj", subj)
            o("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
              "-CAcreateserial", "-out", f"{name}.crt", "-days", "3650", "-extfile", f"{name}.ext")

        leaf("apiserver", "/CN=kube-apiserver",
             "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,"
             "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
             "DNS:kubernetes.default.svc.cluster.local\n")
        leaf("admin", "/O=system:masters/CN=kubernetes-admin", "extendedKeyUsage=clientAuth\n")
        leaf("controller-manager", "/CN=system:kube-controller-manager", "extendedKeyUsage=clientAuth\n")
        leaf("scheduler", "/CN=system:kube-scheduler", "extendedKeyUsage=clientAuth\n")
        for key in pki.glob("*.key"):
            key.chmod(0o600)
        (pki / ".complete").touch()

    def _write_kubeconfig(self, path: Path, user: str) -> None:
        pki = self.run_dir / "pki"
        path.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: mdo-e2e
  cluster:
    server: {self.server}
    certificate-authority: {pki / 'ca.crt'}
users:
- name: {user}
  user:
    client-certificate: {pki / (user + '.crt')}
    client-key: {pki / (user + '.key')}
contexts:
- name: mdo-e2e
  context:
    cluster: mdo-e2e
    user: {user}
    namespace: default
current-context: mdo-e2e
"""
        )

    # ------------------------------------------------------------ process
    def _args(self, component: str) -> List[str]:
        d, pki, p, v = self.run_dir, self.run_dir / "pki", self.ports, str(self.verbosity)
        if component == "etcd":
            client, peer = f"http://127.0.0.1:{p['etcd']}", f"http://127.0.0.1:{p['etcd_peer']}"
            return [
                self.bin("etcd"), "--name=e2e", f"--data-dir={d / 'etcd-data'}",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=e2e={peer}", "--unsafe-no-fsync", "--log-level=warn",
            ]
        if component == "kube-apiserver":
            return [
                self.bin("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                f"--cert-dir={d / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--secure-port={p['apiserver']}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true", "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--profiling=false", f"--v={v}",
                *self.extra_apiserver_args,
            ]
        if component == "kube-controller-manager":
            kc = str(d / "controller-manager.kubeconfig")
            return [
                self.bin("kube-controller-manager"),
                f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true", "--controllers=*",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--leader-elect=false", "--bind-address=127.0.0.1",
                f"--secure-port={p['controller_manager']}",
                f"--cert-dir={d / 'controller-manager-certs'}",
                "--profiling=false", f"--v={v}",
            ]
        if component == "kube-scheduler":
            kc = str(d / "scheduler.kubeconfig")
            return [
                self.bin("kube-scheduler"),
                f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false", "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
                f"--cert-dir={d / 'scheduler-certs'}",
                "--profiling=false", f"--v={v}",
            ]
        if component == "kwok":
            return [
                self.bin("kwok"),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                "--node-ip=127.0.0.1",
                "--cidr=10.244.0.1/16",
                *[f"--config={f}" for f in self._kwok_stage_files()],
                f"--v={'DEBUG' if self.verbosity >= 4 else 'INFO'}",
            ]
        raise ValueError(component)

    def _kwok_stage_files(self) -> List[str]:
        base = self.bin_dir / "kwok-stages" / KWOK_VERSION
        files = [
            base / "node" / "fast" / "node-initialize.yaml",
            base / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
            base / "pod" / "fast" / "pod-ready.yaml",
            base / "pod" / "fast" / "pod-complete.yaml",
            base / "pod" / "fast" / "pod-delete.yaml",
        ]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise ControlPlaneError(f"kwok stages missing: {missing}; run e2e/build-control-plane.sh")
        return [str(f) for f in files]

    def _spawn(self, component: str) -> None:
        log = self.log_path(component)
        log.parent.mkdir(parents=True, exist_ok=True)
        args = self._args(component)
        with open(log, "ab") as out:
            out.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.run_dir, start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self._procs[component] = proc
        self.pids[component] = proc.pid
        self._save_state()

    def _terminate(self, component: str) -> None:
        pid = self.pids.pop(component, None)
        proc = self._procs.pop(component, None)
        if pid is None:
            return
        if proc is None and not self._owned(component, pid):
            return  # pid recycled by something else: leave it alone
        for sig, wait in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)  # pid == pgid: started with start_new_session
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if proc is not None:
                    if proc.poll() is not None:
                        break
                elif not _pid_alive(pid):
                    break
                time.sleep(0.05)
            else:
                continue
            break
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # Reap anything left in the group (nothing is expected).
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._save_state()

    def _owned(self, component: str, pid: int) -> bool:
        cmd = _cmdline(pid)
        return bool(cmd) and Path(cmd[0]).name == component and _pid_alive(pid)

    def _save_state(self) -> None:
        if self.run_dir is None:
            return
        state = {"ports": self.ports, "pids": self.pids, "bin_dir": str(self.bin_dir),
                 "node_name": self.node_name}
        tmp = self.run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.run_dir / "state.json")

    def _check_alive(self, component: str) -> None:
        proc = self._procs.get(component)
        if proc is not None and proc.poll() is not None:
            raise ControlPlaneError(
                f"{component} exited with {proc.returncode}; log {self.log_path(component)}:\n"
                + self.logs_tail(component)
            )

    # ------------------------------------------------------------ waiting
    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.run_dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def _get(self, path: str, timeout: float = 5) -> tuple:
        try:
            with urllib.request.urlopen(self.server + path, context=self._ssl_context(),
                                        timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (OSError, ssl.SSLError) as e:
            return 0, str(e)

    def _wait(self, what: str, cond, timeout: float, components: Sequence[str] = ()) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for c in components:
                self._check_alive(c)
            try:
                ok = cond()
            except Exception as e:  # noqa: BLE001 - keep polling
                ok, last = False, e
            if ok:
                return
            time.sleep(0.25)
        tails = "\n".join(f"--- {c}:\n{self.logs_tail(c, 15)}" for c in components)
        raise ControlPlaneError(f"timed out after {timeout}s waiting for {what} (last: {last})\n{tails}")

    def wait_apiserver_ready(self, timeout: float = 90) -> None:
        self._wait("kube-apiserver /readyz", lambda: self._get("/readyz")[0] == 200,
                   timeout, ["etcd", "kube-apiserver"])

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['etcd']}/health", timeout=2) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def _node_ready(self) -> bool:
        r = self.kubectl("get", "node", self.node_name, "-o",
                         'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False,
                         timeout=10)
        return r.returncode == 0 and r.stdout.strip() == "True"

    def _node_untainted(self) -> bool:
        r = self.kubectl("get", "node", self.node_name, "-o", "jsonpath={.spec.taints}", check=False,
                         timeout=10)
        return r.returncode == 0 and r.stdout.strip() in ("", "[]")

    def _default_sa(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False,
                            timeout=10).returncode == 0

    def node_manifest(self) -> str:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/role": "agent",
                    "node-role.kubernetes.io/agent": "",
                    **self.node_labels,
                },
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": self.node_cpu, "memory": self.node_memory, "pods": self.node_pods},
                "capacity": {"cpu": self.node_cpu, "memory": self.node_memory, "pods": self.node_pods},
            },
        }
        return json.dumps(node)

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 180) -> "ControlPlane":
        """Start everything and wait until the API is ready and the fake node is Ready."""
        if self.use_existing:
            self._started = True
            return self
        if self._started:
            return self
        self.ensure_binaries()
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="mdo-e2e-cp-"))
        self.run_dir = self.run_dir.resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        old = self.run_dir / "state.json"
        if old.exists() and any(_pid_alive(p) for p in json.loads(old.read_text()).get("pids", {}).values()):
            raise ControlPlaneError(f"{self.run_dir} has a running control plane; run `down` first")
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        self._started = True
        t0 = time.monotonic()
        try:
            self._gen_certs()
            self.ports = {k: free_port() for k in
                          ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler")}
            self._write_kubeconfig(self.run_dir / "kubeconfig", "admin")
            self._write_kubeconfig(self.run_dir / "controller-manager.kubeconfig", "controller-manager")
            self._write_kubeconfig(self.run_dir / "scheduler.kubeconfig", "scheduler")
            self._save_state()

            self._spawn("etcd")
            self._wait("etcd /health", self._etcd_healthy, 30, ["etcd"])
            self._spawn("kube-apiserver")
            self.wait_apiserver_ready(max(30.0, timeout - (time.monotonic() - t0)))
            for c in ("kube-controller-manager", "kube-scheduler", "kwok"):
                self._spawn(c)
            self.kubectl("apply", "-f", "-", input=self.node_manifest())
            left = lambda: max(20.0, timeout - (time.monotonic() - t0))  # noqa: E731
            self._wait(f"node {self.node_name} Ready", self._node_ready, left(), COMPONENTS)
            self._wait(f"node {self.node_name} untainted", self._node_untainted, left(), COMPONENTS)
            self._wait("default/default serviceaccount", self._default_sa, left(), COMPONENTS)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop all components (reverse order). Keeps run_dir unless it was a temp dir."""
        if self.use_existing:
            return
        for c in reversed(COMPONENTS):
            self._terminate(c)
        self._started = False
        if self._own_run_dir and self.run_dir is not None and os.environ.get("MDO_E2E_KEEP") != "1":
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def stop_apiserver(self) -> None:
        if self.use_existing:
            raise Unsupported("cannot stop the apiserver of an existing cluster")
        self._terminate("kube-apiserver")

    def start_apiserver(self, timeout: float = 90) -> None:
        if self.use_existing:
            raise Unsupported("cannot start the apiserver of an existing cluster")
        self._spawn("kube-apiserver")
        self.wait_apiserver_ready(timeout)

    def restart_apiserver(self, down_seconds: float = 0.0, timeout: float = 90) -> None:
        """Stop kube-apiserver, stay down ``down_seconds``, start it on the same port, wait ready."""
        self.stop_apiserver()
        if down_seconds:
            time.sleep(down_seconds)
        self.start_apiserver(timeout)

    def is_running(self, component: str) -> bool:
        proc = self._procs.get(component)
        return proc is not None and proc.poll() is None

    def __enter__(self) -> "ControlPlane":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------- CLI (detached)
    @classmethod
    def attach(cls, run_dir: os.PathLike | str) -> "ControlPlane":
        """A handle on a control plane started by ``up`` (for ``down``/``status``)."""
        run_dir = Path(run_dir).resolve()
        state = json.loads((run_dir / "state.json").read_text())
        cp = cls(run_dir, state.get("bin_dir"), node_name=state.get("node_name", "kwok-node-0"),
                 use_existing=False, die_with_parent=False)
        cp.ports = state.get("ports", {})
        cp.pids = {k: int(v) for k, v in state.get("pids", {}).items()}
        cp._started = True
        return cp

    def detach(self) -> None:
        """Leave the processes running after this Python process exits (CLI ``up``)."""
        if self._atexit:
            atexit.unregister(self.stop)
            self._atexit = False
        self._procs.clear()


def _main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("up", "down", "status", "restart-apiserver"):
        p = sub.add_parser(name)
        p.add_argument("--dir", required=True, help="run directory (certs, data, logs, kubeconfig)")
        if name == "up":
            p.add_argument("--bin-dir", default=None, help=f"binaries (default {DEFAULT_BIN})")
            p.add_argument("--timeout", type=float, default=180)
            p.add_argument("-v", "--verbosity", type=int, default=1)
    a = ap.parse_args(argv)
    if a.cmd == "up":
        cp = ControlPlane(a.dir, a.bin_dir, verbosity=a.verbosity, use_existing=False,
                          die_with_parent=False)
        cp.start(timeout=a.timeout)
        cp.detach()
        print(f"control plane up in {cp.startup_seconds:.1f}s; logs in {cp.run_dir / 'logs'}",
              file=sys.stderr)
        print(f"export KUBECONFIG={cp.kubeconfig}")
        print(f"export PATH={cp.bin_dir}:$PATH")
        return 0
    cp = ControlPlane.attach(a.dir)
    if a.cmd == "down":
        cp.stop()
        print(f"control plane in {cp.run_dir} stopped", file=sys.stderr)
    elif a.cmd == "status":
        ok = True
        for c in COMPONENTS:
            pid = cp.pids.get(c)
            alive = pid is not None and cp._owned(c, pid)
            ok &= alive
            print(f"{c:26s} {'running' if alive else 'STOPPED'} pid={pid}")
        code, body = cp._get("/readyz")
        print(f"{'apiserver /readyz':26s} {code} {body.strip()[:60]}")
        return 0 if ok and code == 200 else 1
    elif a.cmd == "restart-apiserver":
        cp.restart_apiserver()
        cp.detach()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
