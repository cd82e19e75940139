"""Operator settings, read once from the environment (prefix MDO_), e.g. set by the Helm chart."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MDO_", extra="ignore")

    # Where MLflow-managed ModelDeployments are created.
    namespace: str = "default"
    # Namespaces watched for ModelDeployments; empty means every namespace (cluster-wide RBAC).
    watch_namespaces: list[str] = Field(default_factory=list)

    # MDO_MLFLOW_TRACKING_URI, else the standard MLFLOW_TRACKING_URI (read when the settings are built,
    # so rendering stays a pure function of the settings).
    mlflow_tracking_uri: str | None = Field(default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI") or None)
    mlflow_poll_enabled: bool = True
    mlflow_poll_interval_seconds: float = Field(default=10.0, gt=0)
    # Backoff for MLflow outages: doubled per failure up to the maximum.
    mlflow_backoff_initial_seconds: float = Field(default=1.0, gt=0)
    mlflow_backoff_max_seconds: float = Field(default=60.0, gt=0)

    runtime_image: str = "ghcr.io/slaclab/model-deploy-runtime:0.1.0"
    runtime_image_pull_policy: str = "IfNotPresent"
    # Secret whose keys become the runtime's env (MLflow and S3 credentials).
    runtime_env_secret: str | None = None
    default_publish: bool = False
    field_manager: str = "model-deploy-operator"

    # Watches that stay silent longer than this are re-established (kopf settings).
    watch_server_timeout_seconds: int = 300
    watch_client_timeout_seconds: int = 330
    request_timeout_seconds: float = 30.0

    metrics_port: int = 8080  # /metrics and /healthz of the operator itself
    status_resync_seconds: float = Field(default=15.0, gt=0)

    # kopf's own liveness endpoint (`--liveness`, with the @kopf.on.probe results); a separate port
    # because metrics_port is served by the operator's metrics server.
    liveness_port: int = 8081
    # Per-call timeout of MLflow client requests (MLflow's own retries are turned off: the poller and the
    # reconciler back off themselves).
    mlflow_request_timeout_seconds: int = Field(default=10, gt=0)
    # kopf `settings.scanning.disabled`: do not list/watch CRDs and namespaces at cluster scope. The Helm
    # chart sets it with namespaced RBAC (rbac.clusterWide=false), which grants neither; kopf then serves
    # exactly watch_namespaces instead of retrying 403s and falling back with warnings.
    kopf_scanning_disabled: bool = False
