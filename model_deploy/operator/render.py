"""Pure rendering: (ModelDeployment spec, operator settings, resolved version) -> Kubernetes objects.

Objects are written as jinja2 templates (model_deploy/operator/templates/) where EVERY interpolated value
goes through `tojson`: JSON is valid YAML, so a name or config text can never change the YAML structure
(no injection), and a `{{ ... }}` inside user text stays a literal string because templates are rendered
once and values are never re-parsed as templates. The rendered text is then `yaml.safe_load`-ed.

The decisions (arguments, env, volumes, checksum) are made in Python here so they can be tested and
reused; the templates only lay them out.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import Any

import jinja2
import yaml

from .crd import (
    ANNOTATION_CHECKSUM,
    ANNOTATION_CR_GENERATION,
    API_VERSION,
    KIND,
    LABEL_DEPLOYMENT,
    ModelDeploymentSpec,
)
from .settings import OperatorSettings

CONTAINER_NAME = "runtime"
RUNTIME_COMMAND = ["model-manager"]
PIPELINE_CONFIG_DIR = "/etc/model-deploy"
PIPELINE_CONFIG_FILE = "pipeline.yaml"
PIPELINE_CONFIG_PATH = f"{PIPELINE_CONFIG_DIR}/{PIPELINE_CONFIG_FILE}"
MODEL_CACHE_DIR = "/var/cache/model-deploy"
# A path where the init container sees the model volume; the runtime sees it at the model's directory.
MODEL_IMAGE_STAGING_DIR = "/model-volume"
RUNTIME_UID = 10001
METRICS_PORT_NAME = "metrics"
MAX_NAME_LENGTH = 63  # DNS-1123/1035 label, e.g. a Service name
TEMPLATE_DIR = "templates"

APP_NAME = "model-deploy-runtime"
MANAGED_BY = "model-deploy-operator"


class RenderError(ValueError):
    """The inputs cannot be rendered (a caller bug, e.g. an alias that was never resolved)."""


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("model_deploy.operator", TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,  # a missing context value is a bug, not an empty string
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["tojson"] = yaml_safe_json
    return env


# Characters YAML must not see raw inside a double-quoted scalar: non-printable ones (the parser refuses
# them) and the Unicode line breaks (the parser would fold them into spaces).
_YAML_UNSAFE = re.compile(
    r"[^\x09\x0a\x0d\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)


def yaml_safe_json(value: Any) -> str:
    """JSON text that YAML parses back to exactly `value` (the templates' `tojson`).

    Unlike jinja's HTML-oriented tojson (ensure_ascii), astral characters stay literal: YAML decodes
    `\\uD83D\\uDE00` as two lone surrogates, not as one emoji. Keys are sorted: deterministic text.
    """
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return _YAML_UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _render_template(template_name: str, context: dict[str, Any]) -> dict[str, Any]:
    text = _environment().get_template(template_name).render(**context)
    obj = yaml.safe_load(text)
    if not isinstance(obj, dict):  # only possible if a template is broken
        raise RenderError(f"template {template_name} did not render a mapping")
    return obj


# ---------------------------------------------------------------------------------------------- names


def pipeline_configmap_name(name: str) -> str:
    return f"{name}-pipeline"


def metrics_service_name(name: str) -> str:
    """`<name>-metrics`, made a valid Service name (DNS-1035: starts with a letter, <= 63 characters).

    CR names may start with a digit, contain dots or be 63 characters long; then a short hash of the
    full name keeps the Service name unique.
    """
    candidate = f"{name}-metrics"
    if len(candidate) <= MAX_NAME_LENGTH and candidate[0].isalpha() and "." not in candidate:
        return candidate
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    stem = name.replace(".", "-")
    if not stem[0].isalpha():
        stem = f"m{stem}"
    suffix = f"-{digest}-metrics"
    stem = stem[: MAX_NAME_LENGTH - len(suffix)].rstrip("-")
    return f"{stem}{suffix}"


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select the runtime pods of one ModelDeployment (immutable on a Deployment)."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": name}


def common_labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_DEPLOYMENT: name,
    }


def owner_references(name: str, uid: str) -> list[dict[str, Any]]:
    # controller=true: garbage collection deletes the objects with the CR, and the Deployment event
    # handler can find its owner.
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


# ------------------------------------------------------------------------------------ runtime inputs


def pipeline_yaml(inline: dict[str, Any]) -> str:
    """The ConfigMap text for an inline pipeline config (sorted keys: same config -> same text)."""
    return yaml.safe_dump(inline, sort_keys=True, default_flow_style=False, allow_unicode=True)


def effective_publish(spec: ModelDeploymentSpec, settings: OperatorSettings) -> bool:
    # An explicit `publish` in the CR wins; otherwise the operator-wide default.
    if "publish" in spec.model_fields_set:
        return spec.publish
    return settings.default_publish


def _mlflow_version(spec: ModelDeploymentSpec, resolved_version: str | None) -> str:
    source = spec.model.mlflow
    assert source is not None
    version = resolved_version or source.version
    if not version:
        raise RenderError(
            f"spec.model.mlflow: alias {source.alias or 'champion'!r} of model {source.name!r} was not resolved "
            "to a version; resolve it with MlflowClient before rendering"
        )
    return version


def runtime_args(
    *, spec: ModelDeploymentSpec, settings: OperatorSettings, resolved_version: str | None
) -> list[str]:
    """Arguments of the runtime CLI (`model-manager ...`)."""
    args: list[str]
    if spec.model.mlflow is not None:
        args = ["-n", spec.model.mlflow.name, "-v", _mlflow_version(spec, resolved_version)]
    else:
        assert spec.model.local is not None
        args = ["-l", spec.model.local.path]
    # No -c without a config: the runtime then uses the model's pv_mappings.yaml artifact from MLflow.
    if spec.config.inline is not None or spec.config.config_map_ref is not None:
        args += ["-c", PIPELINE_CONFIG_PATH]
    if effective_publish(spec, settings):
        args.append("-p")
    args += ["--metrics-port", str(spec.metrics_port)]
    args += list(spec.extra_args or [])
    return args


def tracking_uri(spec: ModelDeploymentSpec, settings: OperatorSettings) -> str | None:
    if spec.model.mlflow is not None and spec.model.mlflow.tracking_uri:
        return spec.model.mlflow.tracking_uri
    return settings.mlflow_tracking_uri


def container_env(spec: ModelDeploymentSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Operator-provided env first, then the user's; a user entry with the same name replaces ours."""
    ours: list[dict[str, Any]] = [{"name": "MODEL_CACHE_DIR", "value": MODEL_CACHE_DIR}]
    uri = tracking_uri(spec, settings)
    if uri:
        ours.insert(0, {"name": "MLFLOW_TRACKING_URI", "value": uri})
    users = list(spec.env or [])
    overridden = {entry.get("name") for entry in users}
    return [entry for entry in ours if entry["name"] not in overridden] + users


def container_env_from(spec: ModelDeploymentSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    sources = list(spec.env_from or [])
    if settings.runtime_env_secret:
        sources.append({"secretRef": {"name": settings.runtime_env_secret}})
    return sources


def container_inputs(
    *, spec: ModelDeploymentSpec, settings: OperatorSettings, resolved_version: str | None
) -> dict[str, Any]:
    """Everything that goes into the runtime container: rendered from, and hashed into the checksum."""
    return {
        "image": spec.image or settings.runtime_image,
        "imagePullPolicy": spec.image_pull_policy or settings.runtime_image_pull_policy,
        "command": RUNTIME_COMMAND,
        "args": runtime_args(spec=spec, settings=settings, resolved_version=resolved_version),
        "env": container_env(spec, settings),
        "envFrom": container_env_from(spec, settings),
        "resources": spec.resources,
        "metricsPort": spec.metrics_port,
        "modelImage": spec.model.image,
    }


def effective_config_text(spec: ModelDeploymentSpec, config_text: str | None) -> str | None:
    """The pipeline YAML the runtime will read: the inline config's dump, or what the caller read from
    the referenced ConfigMap (None when unknown or when the model's MLflow artifact is used, which the
    version already pins)."""
    if spec.config.inline is not None:
        return pipeline_yaml(spec.config.inline)
    return config_text


def config_checksum(
    *,
    spec: ModelDeploymentSpec,
    settings: OperatorSettings,
    resolved_version: str | None,
    config_text: str | None,
) -> str:
    """sha256 over the model version, the pipeline config text and the container inputs.

    Put on the pod template so a new version or config text rolls the Deployment (a ConfigMap edit alone
    would not). Replicas and pausing are deliberately left out: scaling must not restart pods.
    """
    payload = {
        "version": _mlflow_version(spec, resolved_version) if spec.model.mlflow is not None else None,
        "localPath": spec.model.local.path if spec.model.local is not None else None,
        "configText": effective_config_text(spec, config_text),
        "configMapRef": spec.config.config_map_ref.model_dump() if spec.config.config_map_ref else None,
        "container": container_inputs(spec=spec, settings=settings, resolved_version=resolved_version),
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# ------------------------------------------------------------------------------------------- volumes


def _volumes_and_mounts(
    name: str, spec: ModelDeploymentSpec
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, runtime container mounts, init containers)."""
    # readOnlyRootFilesystem: everything the runtime writes goes to these emptyDirs.
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "model-cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "model-cache", "mountPath": MODEL_CACHE_DIR},
    ]
    init_containers: list[dict[str, Any]] = []

    config = spec.config
    if config.inline is not None:
        volumes.append(
            {
                "name": "pipeline-config",
                "configMap": {
                    "name": pipeline_configmap_name(name),
                    "items": [{"key": PIPELINE_CONFIG_FILE, "path": PIPELINE_CONFIG_FILE}],
                },
            }
        )
    elif config.config_map_ref is not None:
        volumes.append(
            {
                "name": "pipeline-config",
                "configMap": {
                    "name": config.config_map_ref.name,
                    "items": [{"key": config.config_map_ref.key, "path": PIPELINE_CONFIG_FILE}],
                },
            }
        )
    if config.inline is not None or config.config_map_ref is not None:
        mounts.append({"name": "pipeline-config", "mountPath": PIPELINE_CONFIG_DIR, "readOnly": True})

    local = spec.model.local
    if local is not None and local.pvc:
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": local.pvc, "readOnly": True}})
        mounts.append({"name": "model", "mountPath": local.mount_dir(), "readOnly": True})
    elif local is not None and spec.model.image:
        # The model image only carries files; copy them into an emptyDir the runtime mounts read-only.
        volumes.append({"name": "model", "emptyDir": {}})
        mounts.append({"name": "model", "mountPath": local.mount_dir(), "readOnly": True})
        init_containers.append(
            {
                "name": "model",
                "image": spec.model.image,
                "command": ["cp", "-R", f"{local.mount_dir().rstrip('/')}/.", f"{MODEL_IMAGE_STAGING_DIR}/"],
                "volumeMounts": [{"name": "model", "mountPath": MODEL_IMAGE_STAGING_DIR}],
                "securityContext": container_security_context(),
            }
        )
    return volumes, mounts, init_containers


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


# ------------------------------------------------------------------------------------------- objects


def render_objects(
    *,
    name: str,
    namespace: str,
    uid: str,
    generation: int,
    spec: ModelDeploymentSpec,
    settings: OperatorSettings,
    resolved_version: str | None,
    config_text: str | None,
) -> list[dict[str, Any]]:
    """The objects one ModelDeployment owns, in apply order: [ConfigMap (inline config only),
    Deployment, Service]. Same inputs -> equal dicts.

    `resolved_version`: the concrete MLflow version (required when the spec uses an alias).
    `config_text`: the referenced ConfigMap's pipeline text when config.configMapRef is used, so an
    edit of that ConfigMap changes the checksum and rolls the pods; ignored for inline configs.
    """
    if not name:
        raise RenderError("metadata.name is empty")
    labels = common_labels(name)
    base = {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "owner_references": owner_references(name, uid),
    }
    objects: list[dict[str, Any]] = []
    if spec.config.inline is not None:
        objects.append(
            _render_template(
                "configmap.yaml.j2",
                {
                    **base,
                    "configmap_name": pipeline_configmap_name(name),
                    "data": {PIPELINE_CONFIG_FILE: pipeline_yaml(spec.config.inline)},
                },
            )
        )

    checksum = config_checksum(
        spec=spec, settings=settings, resolved_version=resolved_version, config_text=config_text
    )
    container = container_inputs(spec=spec, settings=settings, resolved_version=resolved_version)
    volumes, mounts, init_containers = _volumes_and_mounts(name, spec)
    objects.append(
        _render_template(
            "deployment.yaml.j2",
            {
                **base,
                "deployment_annotations": {ANNOTATION_CR_GENERATION: str(generation)},
                "replicas": 0 if spec.paused else spec.replicas,
                "selector": selector_labels(name),
                "pod_annotations": {
                    ANNOTATION_CHECKSUM: checksum,
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(spec.metrics_port),
                    "prometheus.io/path": "/metrics",
                },
                "container_name": CONTAINER_NAME,
                "container": container,
                "metrics_port_name": METRICS_PORT_NAME,
                "volumes": volumes,
                "volume_mounts": mounts,
                "init_containers": init_containers,
                "pod_security_context": pod_security_context(),
                "container_security_context": container_security_context(),
                "node_selector": spec.node_selector,
                "tolerations": spec.tolerations,
                "service_account_name": spec.service_account_name,
            },
        )
    )
    objects.append(
        _render_template(
            "service.yaml.j2",
            {
                **base,
                "service_name": metrics_service_name(name),
                "selector": selector_labels(name),
                "metrics_port_name": METRICS_PORT_NAME,
                "metrics_port": spec.metrics_port,
            },
        )
    )
    return objects
