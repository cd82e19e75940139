"""Prometheus metrics and the /metrics, /healthz, /readyz HTTP server of the runtime.

Metrics live in a dedicated ``CollectorRegistry`` (never the process-global one) so tests and
benchmarks can build several pipelines in one process without name clashes.

Health semantics (used by the Kubernetes probes rendered by the operator):

* ``/healthz`` (liveness): 200 while the process serves HTTP and the pipeline worker thread is
  alive (or has not been started yet); 503 otherwise, so Kubernetes restarts a wedged pod.
* ``/readyz`` (readiness): 200 when the model is loaded and every input PV is connected; 503 with
  a JSON body listing the reasons otherwise. Non-finite inputs are reported in the body under
  ``warnings`` but do NOT make the pod unready: NaN coming from the control system is a property of
  the machine, not of this pod, and flapping readiness would not fix it.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

logger = logging.getLogger(__name__)

PREFIX = "model_deploy_runtime"
STAGES = ("get", "transform_in", "model", "transform_out", "put")
# Fine buckets: a small formula+torch model evaluates in tens of microseconds, big ones in 100s of ms.
EVALUATION_BUCKETS = (
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,
)


class RuntimeMetrics:
    """All runtime metrics, registered in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.updates_received = Counter(
            f"{PREFIX}_updates_received", "Input PV updates received from the control system", registry=reg
        )
        self.coalesced_updates = Counter(
            f"{PREFIX}_coalesced_updates",
            "Input updates superseded by a newer value of the same input before being processed",
            registry=reg,
        )
        self.superseded_outputs = Counter(
            f"{PREFIX}_superseded_outputs",
            "Output sets replaced by a newer one while a write to the control system was in flight",
            registry=reg,
        )
        self.evaluations = Counter(f"{PREFIX}_evaluations", "Successful model evaluations", registry=reg)
        self.evaluation_duration = Histogram(
            f"{PREFIX}_evaluation_duration_seconds",
            "Wall time of one model evaluation",
            buckets=EVALUATION_BUCKETS,
            registry=reg,
        )
        self.errors = Counter(f"{PREFIX}_errors", "Errors by pipeline stage", ["stage"], registry=reg)
        for stage in STAGES:  # pre-create so every stage is exported as 0 from the start
            self.errors.labels(stage=stage)
        self.last_output_timestamp = Gauge(
            f"{PREFIX}_last_output_timestamp_seconds",
            "Unix time the last output set was produced (and written, when publishing)",
            registry=reg,
        )
        self.non_finite_inputs = Counter(
            f"{PREFIX}_non_finite_inputs",
            "Evaluations skipped because a model input was NaN or infinite",
            registry=reg,
        )
        self.inputs_connected = Gauge(
            f"{PREFIX}_inputs_connected", "Number of input PVs currently connected", registry=reg
        )
        self.inputs_configured = Gauge(
            f"{PREFIX}_inputs_configured", "Number of input PVs in the pipeline config", registry=reg
        )
        self.model_info = Info(f"{PREFIX}_model", "The model this runtime serves", registry=reg)

    def set_model(self, name: str | None, version: str | None, source: str | None = None) -> None:
        self.model_info.info({"name": name or "", "version": version or "", "source": source or ""})

    def error_counter(self, stage: str):
        """The errors_total child for one stage (resolve once, increment on the hot path)."""
        return self.errors.labels(stage=stage)

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """Current value of one sample (tests, status output)."""
        return self.registry.get_sample_value(name, dict(labels or {}))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class HealthReport:
    """Outcome of a liveness or readiness check; serialised as the probe's JSON body."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body = {"ok": self.ok, "reasons": self.reasons, **self.details}
        return json.dumps(body, default=str, sort_keys=True).encode()


def readiness_report(
    *,
    model_loaded: bool,
    connections: Mapping[str, bool],
    non_finite_inputs: Sequence[str] = (),
    worker_alive: bool = True,
    evaluations: int = 0,
) -> HealthReport:
    """Pure readiness rule: model loaded, worker running and every input PV connected."""
    reasons: list[str] = []
    if not model_loaded:
        reasons.append("model not loaded yet")
    if not worker_alive:
        reasons.append("pipeline worker thread is not running")
    disconnected = sorted(name for name, ok in connections.items() if not ok)
    reasons.extend(f"input PV {name} is disconnected" for name in disconnected)
    warnings = [f"model input {name} is not finite; evaluations are skipped" for name in non_finite_inputs]
    details = {
        "disconnected_inputs": disconnected,
        "non_finite_inputs": list(non_finite_inputs),
        "warnings": warnings,
        "evaluations": evaluations,
    }
    return HealthReport(ok=not reasons, reasons=reasons, details=details)


HealthCheck = Callable[[], HealthReport]


def _always_ok() -> HealthReport:
    return HealthReport(ok=True)


class MetricsServer:
    """stdlib ThreadingHTTPServer in a daemon thread serving /metrics, /healthz and /readyz.

    The checks are callables so the CLI can start the server before the model is loaded (the
    readiness check then says "model not loaded yet") and swap in the pipeline's checks later.
    """

    def __init__(
        self,
        metrics: RuntimeMetrics,
        port: int,
        host: str = "0.0.0.0",
        liveness: HealthCheck = _always_ok,
        readiness: HealthCheck = _always_ok,
    ):
        self.metrics = metrics
        self.liveness = liveness
        self.readiness = readiness
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> "MetricsServer":
        self._thread.start()
        logger.info("metrics and health server listening on port %d", self.port)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _make_handler(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, server.metrics.exposition())
            elif path in ("/healthz", "/readyz"):
                check = server.liveness if path == "/healthz" else server.readiness
                try:
                    report = check()
                except Exception as exc:  # a broken check must answer, not kill the probe thread
                    report = HealthReport(ok=False, reasons=[f"health check failed: {exc}"])
                self._send(200 if report.ok else 503, "application/json", report.to_json())
            else:
                self._send(404, "text/plain", b"not found; try /metrics, /healthz or /readyz\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: keep quiet
            logger.debug("http %s", format % args)

    return Handler
