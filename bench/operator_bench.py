#!/usr/bin/env python3
"""Operator benchmark on the real control plane + a real MLflow server + the operator subprocess.

(a) MLflow latency: for N registered models, set one at a time at a random offset within the poll
    interval, the time from `deployment_type=prod` being set to: the ModelDeployment created, its
    Deployment created, the CR Ready, and the MLflow tag deployment_status=running; plus the lag from the
    CR Ready to that tag (the status path's own cost, independent of the poll phase). Median and max, per
    poll interval (default 10 s and 2 s). Baseline: the poll interval itself (ratio p50 / interval).
(b) Reconcile throughput: create M ModelDeployments at once (through the API, as kubectl would) and time
    until every one is Ready (per-CR p50/max and the total). Baseline, same control plane, same command:
    `kubectl apply` of M equivalent Deployments (rendered by the operator's own render.py) timed to all
    ready; ratio operator / baseline.

Not a test: prints a table (and, unless --no-readme, replaces the `## Operator benchmark` section at the
end of bench/README.md). Events are observed with watches, MLflow tags by polling every 100 ms.

    .venv/bin/python bench/operator_bench.py                     # full run (~6-8 min on 2 cores)
    .venv/bin/python bench/operator_bench.py --models 3 --intervals 2 --crs 50 --no-readme   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "e2e"), str(ROOT)]

from controlplane import ControlPlane  # noqa: E402
from operator_fixtures import (  # noqa: E402
    GROUP,
    PLURAL,
    VERSION,
    Cluster,
    OperatorProcess,
    cr_ready,
    deployment_ready,
    local_model_cr,
)

from model_deploy.operator.crd import parse_spec  # noqa: E402
from model_deploy.operator.mlflow_sync import deployment_name_for_model  # noqa: E402
from model_deploy.operator.render import render_objects  # noqa: E402
from model_deploy.operator.settings import OperatorSettings  # noqa: E402
from tests.fixtures.mlflow_server import MlflowServer  # noqa: E402

README_HEADING = "## Operator benchmark"


class BenchError(RuntimeError):
    pass


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


# ------------------------------------------------------------------------------------------- watching
@dataclass
class FirstSeen:
    """When each object (by name) was first seen, and first seen ready, by a watch on one namespace."""

    created: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class NamespaceWatch:
    """A background watch (re-established on expiry) that records FirstSeen times (time.monotonic)."""

    def __init__(self, cluster: Cluster, namespace: str, kind: str):
        from kubernetes import watch

        self.cluster, self.namespace, self.kind = cluster, namespace, kind
        self.seen = FirstSeen()
        self._watch = watch.Watch()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{kind}")
        self._started = threading.Event()

    def start(self) -> "NamespaceWatch":
        self._thread.start()
        self._started.wait(10)
        return self

    def _stream(self, resource_version: str | None):
        kwargs: dict[str, Any] = {"timeout_seconds": 60, "allow_watch_bookmarks": False}
        if resource_version:
            kwargs["resource_version"] = resource_version
        if self.kind == "modeldeployment":
            return self._watch.stream(self.cluster.custom.list_namespaced_custom_object, GROUP, VERSION,
                                      self.namespace, PLURAL, **kwargs)
        return self._watch.stream(self.cluster.apps.list_namespaced_deployment, self.namespace, **kwargs)

    def _record(self, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        ready = cr_ready(obj) if self.kind == "modeldeployment" else deployment_ready(obj)
        with self.seen.lock:
            self.seen.created.setdefault(name, now)
            if ready:
                self.seen.ready.setdefault(name, now)

    def _run(self) -> None:
        resource_version = None
        while not self._stop.is_set():
            try:
                stream = self._stream(resource_version)
                self._started.set()
                for event in stream:
                    now = time.monotonic()
                    obj = event["object"]
                    if not isinstance(obj, dict):
                        obj = self.cluster._plain(obj)
                    resource_version = obj["metadata"].get("resourceVersion") or resource_version
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(obj, now)
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - expired resource version etc.: re-list from now
                resource_version = None
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()


# ----------------------------------------------------------------------------------------- statistics
def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(seconds: float) -> str:
    return f"{seconds:.2f}"


# ------------------------------------------------------------------------------- (a) MLflow latencies
LATENCY_STAGES = ("CR created", "Deployment created", "CR Ready", "MLflow tag running")
LAG_STAGE = "CR Ready -> tag running"  # not from the tag: the status path alone


@dataclass
class LatencyResult:
    interval: float
    samples: dict[str, list[float]]

    def row(self, stage: str) -> tuple[float, float]:
        values = self.samples[stage]
        return p50(values), max(values)


def measure_latency(cp: ControlPlane, cluster: Cluster, mlflow: MlflowServer, workdir: Path, interval: float,
                    models: int, rng: random.Random) -> LatencyResult:
    from mlflow import MlflowClient

    namespace = new_namespace(cp, cluster, f"bench-lat-{int(interval)}")
    client = MlflowClient(tracking_uri=mlflow.uri, registry_uri=mlflow.uri)
    run_id = client.create_run(experiment_id="0").info.run_id
    operator = OperatorProcess(kubeconfig=cp.kubeconfig, namespace=namespace, workdir=workdir / f"lat-{interval}",
                               mlflow_uri=mlflow.uri, poll=True, poll_interval=interval,
                               name=f"operator-poll-{interval:g}s")
    crs = NamespaceWatch(cluster, namespace, "modeldeployment").start()
    deployments = NamespaceWatch(cluster, namespace, "deployment").start()
    samples: dict[str, list[float]] = {stage: [] for stage in (*LATENCY_STAGES, LAG_STAGE)}
    names: list[str] = []
    try:
        operator.start()
        for i in range(models):
            name = f"bench-{int(interval)}s-{i:02d}-{os.urandom(2).hex()}"
            names.append(name)
            client.create_registered_model(name)
            client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
            cr_name = deployment_name_for_model(name)
            time.sleep(rng.uniform(0, interval))  # a random phase against the operator's poll loop
            t0 = time.monotonic()
            client.set_registered_model_tag(name, "deployment_type", "prod")
            ready_at = wait_until(lambda: crs.seen.ready.get(cr_name), 120, f"{cr_name} Ready")
            tag_at = wait_until(
                lambda: (client.get_registered_model(name).tags or {}).get("deployment_status") == "running"
                and time.monotonic(), 60, f"{name} tag running", interval=0.1,
            )
            samples["CR created"].append(crs.seen.created[cr_name] - t0)
            deployment_at = wait_until(lambda: deployments.seen.created.get(cr_name), 30, f"{cr_name} Deployment event")
            samples["Deployment created"].append(deployment_at - t0)
            samples["CR Ready"].append(ready_at - t0)
            samples["MLflow tag running"].append(tag_at - t0)
            samples[LAG_STAGE].append(tag_at - ready_at)
            print(f"  poll {interval:g}s model {i + 1}/{models}: " + ", ".join(
                f"{stage} {fmt(values[-1])}s" for stage, values in samples.items()), flush=True)
    finally:
        crs.stop()
        deployments.stop()
        operator.stop()
        for name in names:  # no later poller may pick these up
            try:
                client.delete_registered_model(name)
            except Exception:  # noqa: BLE001
                pass
        drop(cp, namespace)
    return LatencyResult(interval, samples)


# ------------------------------------------------------------------------------ (b) reconcile throughput
@dataclass
class ThroughputResult:
    count: int
    per_object: list[float]  # creation start -> Ready, per object
    total: float  # creation start -> the last one Ready
    create_seconds: float  # how long submitting took


def bench_cr(i: int, node_selector: dict[str, str]) -> dict[str, Any]:
    return local_model_cr(f"tp-{i:03d}", node_selector=node_selector)


def measure_operator_throughput(cp: ControlPlane, cluster: Cluster, workdir: Path, count: int) -> ThroughputResult:
    namespace = new_namespace(cp, cluster, "bench-tp-op")
    operator = OperatorProcess(kubeconfig=cp.kubeconfig, namespace=namespace, workdir=workdir / "throughput",
                               mlflow_uri="http://127.0.0.1:9", poll=False, name="operator-throughput")
    watch = NamespaceWatch(cluster, namespace, "modeldeployment").start()
    try:
        operator.start()
        bodies = [bench_cr(i, cp.node_selector) for i in range(count)]
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:  # "at once": concurrent creates, as many clients would
            list(pool.map(lambda body: cluster.create_cr(namespace, body), bodies))
        created = time.monotonic() - t0
        names = [body["metadata"]["name"] for body in bodies]
        return wait_all_ready(watch, names, t0, created, f"{count} ModelDeployments Ready")
    finally:
        watch.stop()
        operator.stop()
        drop(cp, namespace)


def wait_all_ready(watch: NamespaceWatch, names: list[str], t0: float, created: float,
                   what: str) -> ThroughputResult:
    """Wait until the watch saw every object Ready; each one's time from t0, and the total."""
    wait_until(lambda: all(n in watch.seen.ready for n in names), 600, what, interval=0.2)
    per_object = [watch.seen.ready[n] - t0 for n in names]
    return ThroughputResult(len(names), per_object, max(per_object), created)


def equivalent_deployments(count: int, namespace: str, node_selector: dict[str, str]) -> list[dict[str, Any]]:
    """The Deployments the operator renders for the same CRs (its own render.py), minus ownerReferences."""
    settings = OperatorSettings(mlflow_tracking_uri="http://127.0.0.1:9")
    deployments = []
    for i in range(count):
        body = bench_cr(i, node_selector)
        name = body["metadata"]["name"]
        objects = render_objects(name=name, namespace=namespace, uid="00000000-0000-0000-0000-000000000000",
                                 generation=1, spec=parse_spec(body["spec"]), settings=settings,
                                 resolved_version=None, config_text=None)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        deployment["metadata"].pop("ownerReferences", None)
        deployments.append(deployment)
    return deployments


def measure_baseline_throughput(cp: ControlPlane, cluster: Cluster, workdir: Path, count: int) -> ThroughputResult:
    namespace = new_namespace(cp, cluster, "bench-tp-base")
    manifest = workdir / "baseline-deployments.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                    "items": equivalent_deployments(count, namespace, cp.node_selector)}))
    watch = NamespaceWatch(cluster, namespace, "deployment").start()
    try:
        t0 = time.monotonic()
        cp.kubectl("apply", "-n", namespace, "-f", str(manifest), timeout=300)
        created = time.monotonic() - t0
        names = [f"tp-{i:03d}" for i in range(count)]
        return wait_all_ready(watch, names, t0, created, f"{count} Deployments ready")
    finally:
        watch.stop()
        drop(cp, namespace)


# -------------------------------------------------------------------------------------------- plumbing
def new_namespace(cp: ControlPlane, cluster: Cluster, prefix: str) -> str:
    name = f"{prefix}-{os.urandom(3).hex()}"
    cp.kubectl("create", "namespace", name)
    wait_until(lambda: cluster.get("serviceaccount", name, "default"), 60, f"default ServiceAccount in {name}", 0.2)
    return name


def drop(cp: ControlPlane, namespace: str) -> None:
    cp.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def versions(cp: ControlPlane) -> dict[str, str]:
    from importlib.metadata import version

    try:
        kube = json.loads(cp.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    except Exception:  # noqa: BLE001
        kube = "?"
    return {"kubernetes": kube, "kopf": version("kopf"), "mlflow": version("mlflow"),
            "python": platform.python_version()}


def render_report(latencies: list[LatencyResult], throughput: ThroughputResult | None,
                  baseline: ThroughputResult | None, meta: dict[str, Any]) -> str:
    lines = [README_HEADING, ""]
    lines.append(
        f"`{meta['command']}` on {meta['date']} — {meta['cpus']} CPUs, load average at start "
        f"{meta['load']}; Kubernetes {meta['versions']['kubernetes']} (local control plane: etcd, apiserver, "
        f"controller-manager, scheduler, kwok fake node), MLflow {meta['versions']['mlflow']} (sqlite), "
        f"kopf {meta['versions']['kopf']}, Python {meta['versions']['python']}. Times in seconds."
    )
    lines.append("")
    if latencies:
        lines += [
            f"### (a) MLflow tag `deployment_type=prod` -> ... ({meta['models']} models, one at a time, "
            "random offset within the poll interval)",
            "",
            "| poll interval | stage | p50 | max | p50 / interval |",
            "|---:|---|---:|---:|---:|",
        ]
        for result in latencies:
            for stage in LATENCY_STAGES:
                median, worst = result.row(stage)
                lines.append(f"| {result.interval:g} s | {stage} | {fmt(median)} | {fmt(worst)} | "
                             f"{median / result.interval:.2f} |")
            if result.samples.get(LAG_STAGE):
                median, worst = result.row(LAG_STAGE)
                lines.append(f"| {result.interval:g} s | {LAG_STAGE} (lag) | {fmt(median)} | {fmt(worst)} | - |")
        lines.append("")
        for result in latencies:
            median = result.row("Deployment created")[0]
            verdict = "met" if median < result.interval + 1 else "MISSED"
            lines.append(f"- poll {result.interval:g} s: tag-to-Deployment p50 {fmt(median)} s vs target "
                         f"< {result.interval + 1:g} s (interval + 1 s): **{verdict}**.")
            if result.samples.get(LAG_STAGE):
                lag, worst = result.row(LAG_STAGE)
                lines.append(f"- poll {result.interval:g} s: CR Ready -> `deployment_status=running` tag p50 "
                             f"{fmt(lag)} s, max {fmt(worst)} s (the tag is polled every 100 ms).")
        lines.append("")
    if throughput is not None:
        lines += [
            f"### (b) {throughput.count} ModelDeployments created at once -> all Ready",
            "",
            "| run | submit | per object p50 | per object max | total | ratio vs baseline |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        if baseline is not None:
            lines.append(f"| baseline: `kubectl apply` of {baseline.count} equivalent Deployments | "
                         f"{fmt(baseline.create_seconds)} | {fmt(p50(baseline.per_object))} | "
                         f"{fmt(max(baseline.per_object))} | {fmt(baseline.total)} | 1.00 |")
        ratio = f"{throughput.total / baseline.total:.2f}" if baseline is not None else "n/a"
        lines.append(f"| operator: {throughput.count} CRs (API creates, 8 concurrent clients) | "
                     f"{fmt(throughput.create_seconds)} | {fmt(p50(throughput.per_object))} | "
                     f"{fmt(max(throughput.per_object))} | {fmt(throughput.total)} | {ratio} |")
        lines.append("")
        verdict = "met" if throughput.total < 60 else "MISSED"
        lines.append(f"- target: {throughput.count} converge in < 60 s: **{verdict}** ({fmt(throughput.total)} s).")
        if baseline is not None:
            lines.append(
                f"- the baseline is the control plane's own floor (ReplicaSets, pods, scheduling, kwok; "
                f"kube-controller-manager writes at its default client rate limit of 20 requests/s): "
                f"the operator's own share is the difference, {fmt(throughput.total - baseline.total)} s."
            )
        lines.append("")
    lines += [
        "Notes: pods are kwok fakes (Ready as soon as scheduled; no runtime container runs), so these figures "
        "measure the operator and the control plane, not model start-up. Stages are observed with watches "
        "(CR/Deployment) and by polling MLflow every 100 ms (tag). The (a) baseline is the poll interval: with a "
        "random offset the expected tag-to-CR wait is about half of it plus one poll's work.",
        "",
    ]
    return "\n".join(lines)


def write_readme(path: Path, section: str) -> None:
    """Replace our section (always the last one) or append it; the rest of the file is left as it is."""
    text = path.read_text() if path.exists() else ""
    if README_HEADING in text:
        text = text[: text.index(README_HEADING)].rstrip() + "\n"
    separator = "\n" if text and not text.endswith("\n\n") else ""
    path.write_text(text + separator + section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=10, help="models per poll interval in (a)")
    parser.add_argument("--intervals", default="10,2", help="poll intervals for (a), seconds, comma-separated")
    parser.add_argument("--crs", type=int, default=200, help="ModelDeployments in (b)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the (a) offsets")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    parser.add_argument("--no-readme", action="store_true", help="only print, do not touch bench/README.md")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="mdo-operator-bench-"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    meta = {"command": " ".join(["python bench/operator_bench.py", *(argv if argv is not None else sys.argv[1:])]),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
            "load": load, "models": args.models}
    rng = random.Random(args.seed)
    cp = ControlPlane(workdir / "control-plane")
    mlflow = MlflowServer(workdir / "mlflow")
    latencies: list[LatencyResult] = []
    throughput = baseline = None
    try:
        print(f"starting the control plane and MLflow (run dir {workdir}) ...", flush=True)
        cp.start()
        os.environ["KUBECONFIG"] = cp.kubeconfig
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "modeldeployment.yaml"))
        cp.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")
        cluster = Cluster(cp.kubeconfig)
        meta["versions"] = versions(cp)
        if not args.skip_latency:
            mlflow.start()
            for interval in [float(x) for x in args.intervals.split(",") if x.strip()]:
                print(f"(a) MLflow latency, poll interval {interval:g}s, {args.models} models", flush=True)
                latencies.append(measure_latency(cp, cluster, mlflow, workdir, interval, args.models, rng))
        if not args.skip_throughput:
            print(f"(b) baseline: kubectl apply of {args.crs} Deployments", flush=True)
            baseline = measure_baseline_throughput(cp, cluster, workdir, args.crs)
            print(f"(b) operator: {args.crs} ModelDeployments", flush=True)
            throughput = measure_operator_throughput(cp, cluster, workdir, args.crs)
    except BenchError as exc:
        print(f"benchmark failed: {exc}; logs in {workdir}", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        mlflow.stop()
        cp.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = render_report(latencies, throughput, baseline, meta)
    print()
    print(report)
    if not args.no_readme:
        write_readme(args.readme, report)
        print(f"(written to {args.readme})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
