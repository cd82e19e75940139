"""Prometheus metrics of the operator and a small HTTP server for /metrics and /healthz.

Each OperatorMetrics owns its CollectorRegistry, so tests (and two syncs in one process) never share
counters by accident.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from model_deploy.operator.status import PHASES

log = logging.getLogger(__name__)
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "mdo_reconciles", "ModelDeployment reconciles by result", ["result"], registry=r
        )
        self.reconcile_errors = Counter(
            "mdo_reconcile_errors", "Failed or degraded reconciles by reason", ["reason"], registry=r
        )
        self.reconcile_duration = Histogram(
            "mdo_reconcile_duration_seconds", "Time of one reconcile", buckets=_DURATION_BUCKETS, registry=r
        )
        self.mlflow_poll_duration = Histogram(
            "mdo_mlflow_poll_duration_seconds", "Time of one MLflow poll", buckets=_DURATION_BUCKETS, registry=r
        )
        self.mlflow_poll_errors = Counter("mdo_mlflow_poll_errors", "Failed MLflow polls", registry=r)
        self.mlflow_up = Gauge("mdo_mlflow_up", "1 when the last MLflow call succeeded", registry=r)
        self.managed_deployments = Gauge(
            "mdo_managed_deployments", "ModelDeployments by phase", ["phase"], registry=r
        )
        self.tag_writes = Counter(
            "mdo_mlflow_tag_writes", "Registered-model tags written to MLflow", registry=r
        )
        for phase in PHASES:
            self.managed_deployments.labels(phase=phase).set(0)

    def set_phase_counts(self, phases: Iterable[str]) -> None:
        counts = Tally(phases)
        for phase in set(PHASES) | set(counts):
            self.managed_deployments.labels(phase=phase).set(counts.get(phase, 0))

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of one sample (0 when absent); for tests and the probe endpoint."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


HealthCheck = Callable[[], tuple[bool, str]]


class MetricsServer:
    """A daemon-thread HTTP server: GET /metrics (Prometheus text) and GET /healthz."""

    def __init__(self, metrics: OperatorMetrics, port: int, host: str = "0.0.0.0", health: HealthCheck | None = None):
        self.metrics = metrics
        self.health = health or (lambda: (True, "ok"))
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="mdo-metrics", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "MetricsServer":
        self._thread.start()
        log.info("metrics on :%d/metrics, health on :%d/healthz", self.port, self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, server.metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok, detail = server.health()
                    self._reply(200 if ok else 503, detail.encode() + b"\n", "text/plain; charset=utf-8")
                else:
                    self._reply(404, b"not found; try /metrics or /healthz\n", "text/plain")

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - scrapes are not news
                log.debug("metrics http: " + format, *args)

        return Handler
