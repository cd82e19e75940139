"""Pydantic models of the ModelDeployment custom resource.

crds/modeldeployment.yaml is the API server's view of the same schema; tests keep the two in step.
The models are the operator's view: they turn a raw kopf `spec` dict into typed values and turn every
problem into one message that names the field and the fix.
"""

from __future__ import annotations

import posixpath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

GROUP = "deploy.lume.slac.stanford.edu"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["mdep"]
API_VERSION = f"{GROUP}/{VERSION}"

# Labels and annotations owned by the operator.
LABEL_MANAGED_BY = f"{GROUP}/managed-by"  # "mlflow" on CRs the MLflow poller created
LABEL_DEPLOYMENT = f"{GROUP}/deployment"  # the CR name, on every rendered object
ANNOTATION_REGISTERED_MODEL = f"{GROUP}/registered-model"
ANNOTATION_CHECKSUM = f"{GROUP}/config-checksum"
# The CR generation a rendered Deployment was built from (debugging aid: "is the Deployment stale?").
ANNOTATION_CR_GENERATION = f"{GROUP}/cr-generation"
MANAGED_BY_MLFLOW = "mlflow"


class _Spec(BaseModel):
    # Kubernetes objects use camelCase; unknown fields are pruned by the API server anyway, but a typo in
    # a field name must not be silently ignored when the spec comes from elsewhere (tests, the CLI).
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MlflowModelSource(_Spec):
    name: str = Field(min_length=1, description="Registered model name in MLflow")
    version: str | None = Field(default=None, description="Model version number")
    alias: str | None = Field(default=None, description="Model alias, e.g. champion")
    tracking_uri: str | None = Field(default=None, alias="trackingUri")

    @model_validator(mode="after")
    def _one_selector(self) -> "MlflowModelSource":
        if self.version and self.alias:
            raise ValueError("set either version or alias, not both")
        if self.version is not None and not self.version.isdigit():
            raise ValueError(
                f"version must be a version number such as '3', got {self.version!r}; "
                "use alias for names like 'champion'"
            )
        return self

    def model_uri(self) -> str:
        if self.version:
            return f"models:/{self.name}/{self.version}"
        return f"models:/{self.name}@{self.alias or 'champion'}"


class LocalModelSource(_Spec):
    """A model directory (with a model factory) on a volume: hostPath-free, PVC or image path."""

    path: str = Field(min_length=1, description="Directory or file:Factory inside the container")
    pvc: str | None = Field(default=None, description="PersistentVolumeClaim mounted at `path`")

    @model_validator(mode="after")
    def _absolute_path(self) -> "LocalModelSource":
        if not self.path.startswith("/"):
            raise ValueError(
                f"path must be absolute inside the container, e.g. /models/my_model, got {self.path!r}"
            )
        if self.pvc and self.mount_dir() == "/":
            raise ValueError(
                "path needs a parent directory to mount the volume at (not '/'), e.g. /models/my_model"
            )
        return self

    def mount_dir(self) -> str:
        """Directory where a PVC (or a model image's files) is mounted: the parent of the model path.

        `path` may be `dir`, `dir/file.py` or `dir/file.py:Factory`; the factory suffix is not a path.
        """
        file_path = self.path.split(":", 1)[0].rstrip("/") or "/"
        return posixpath.dirname(file_path) or "/"


class ModelSource(_Spec):
    mlflow: MlflowModelSource | None = None
    local: LocalModelSource | None = None
    image: str | None = Field(default=None, description="An image that carries the model at local.path")

    @model_validator(mode="after")
    def _exactly_one(self) -> "ModelSource":
        if (self.mlflow is None) == (self.local is None):
            raise ValueError("set exactly one of model.mlflow or model.local")
        if self.image and self.local is None:
            raise ValueError("model.image needs model.local.path: the path of the model inside the image")
        if self.image and self.local is not None:
            if self.local.pvc:
                raise ValueError("set either model.image or model.local.pvc, not both: both would be mounted at "
                                 "the model directory")
            if self.local.mount_dir() == "/":
                raise ValueError("model.local.path needs a parent directory (not '/') to copy the model image's "
                                 "files into, e.g. /models/my_model")
        return self


class ConfigMapKeyRef(_Spec):
    name: str = Field(min_length=1)
    key: str = Field(default="pv_mappings.yaml", min_length=1)


class PipelineConfigSource(_Spec):
    """Where the runtime's pipeline YAML comes from. Both unset: the model's pv_mappings.yaml in MLflow."""

    inline: dict[str, Any] | None = None
    config_map_ref: ConfigMapKeyRef | None = Field(default=None, alias="configMapRef")

    @model_validator(mode="after")
    def _at_most_one(self) -> "PipelineConfigSource":
        if self.inline is not None and self.config_map_ref is not None:
            raise ValueError("set at most one of config.inline or config.configMapRef")
        return self


class ModelDeploymentSpec(_Spec):
    model: ModelSource
    config: PipelineConfigSource = Field(default_factory=PipelineConfigSource)
    image: str | None = Field(default=None, description="Runtime image; default from operator settings")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, alias="imagePullPolicy"
    )
    replicas: int = Field(default=1, ge=0, le=10)
    resources: dict[str, Any] | None = None
    node_selector: dict[str, str] | None = Field(default=None, alias="nodeSelector")
    tolerations: list[dict[str, Any]] | None = None
    env: list[dict[str, Any]] | None = None
    env_from: list[dict[str, Any]] | None = Field(default=None, alias="envFrom")
    service_account_name: str | None = Field(default=None, alias="serviceAccountName")
    publish: bool = False
    paused: bool = False
    metrics_port: int = Field(default=9100, ge=1, le=65535, alias="metricsPort")
    extra_args: list[str] | None = Field(default=None, alias="extraArgs")

    @model_validator(mode="after")
    def _local_needs_config(self) -> "ModelDeploymentSpec":
        if self.model.local is not None and self.config.inline is None and self.config.config_map_ref is None:
            raise ValueError(
                "a local model has no pv_mappings.yaml in MLflow: set config.inline or config.configMapRef"
            )
        return self


class SpecError(ValueError):
    """A spec the operator cannot act on; `problems` are one line per field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(["spec", *(str(part) for part in loc)])


def parse_spec(spec: dict[str, Any]) -> ModelDeploymentSpec:
    """Validate a raw spec; raise SpecError with one message per problem, naming the field."""
    try:
        return ModelDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            path = _field_path(tuple(error["loc"]))
            if error["type"] == "extra_forbidden":
                message = "unknown field; remove it or check its spelling"
            problems.append(f"{path}: {message}")
        raise SpecError(problems) from None
