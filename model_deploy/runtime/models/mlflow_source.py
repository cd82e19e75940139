"""Registered models from MLflow: resolve name + version/alias, download once into the cache, load.

Resolution: a numeric version is used as is; an alias (``champion``, or ``models:/name@champion``)
is resolved with ``get_model_version_by_alias`` to a concrete version first, which is what gets
cached and reported; ``latest`` means the highest version number.

The pipeline config (``pv_mappings.yaml``; the seed's examples also say ``pv_mapping.yaml``) is
looked up, first match wins, in: the run's ``<model name>/`` artifact directory (the seed's
convention), the model artifact root, the run's artifact root. It is stored next to the model in
the cache entry.

Loading the downloaded model directory by flavour:
  * pyfunc ``PythonModel``: ``unwrap_python_model()``; if it has ``get_lume_model()`` (lume-model's
    own ``register_to_mlflow`` wrapper) or ``get_model()`` (the seed's wrapper contract), the object
    it returns is the model; else if the python model itself has ``evaluate`` it is the model;
    otherwise the pyfunc ``predict`` is adapted (``PyfuncPredictAdapter``).
  * pytorch (lume-model's ``register_to_mlflow`` of a ``TorchModule``): ``mlflow.pytorch.load_model``.
  * any other flavour: its pyfunc ``predict``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel

from model_deploy.runtime.errors import ConfigError
from model_deploy.runtime.models.adapters import EvaluateAdapter, PyfuncPredictAdapter, adapt_model
from model_deploy.runtime.models.base import (
    ModelAdapter,
    ModelLoadError,
    ModelNotFoundError,
    ModelSourceUnreachable,
)
from model_deploy.runtime.models.cache import (
    CONFIG_NAME,
    MODEL_SUBDIR,
    CacheMarker,
    CachedModel,
    ModelCache,
)

logger = logging.getLogger(__name__)

CONFIG_FILE_NAMES = (CONFIG_NAME, "pv_mapping.yaml")
CONNECT_TIMEOUT_SECONDS = 5.0
MAX_LISTED = 20  # names/versions shown in "not found" errors
LATEST = "latest"
_NUMERIC = re.compile(r"[0-9]+")
_ALIAS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")

T = TypeVar("T")


class ModelReference(BaseModel):
    """What was asked for: a registered model name and either a numeric version or an alias."""

    name: str
    version: str | None = None
    alias: str | None = None

    @property
    def label(self) -> str:
        return f"models:/{self.name}/{self.version}" if self.version else f"models:/{self.name}@{self.alias}"


def parse_reference(model_name: str | None, model_version: str | int | None,
                    model_uri: str | None) -> ModelReference:
    """Validate the user's name/version/uri into a ModelReference; ConfigError names the field."""
    if model_uri is not None:
        if model_name is not None or model_version is not None:
            raise ConfigError("model_uri: give either model_uri or model_name + model_version, not both")
        return _parse_models_uri(model_uri)
    if not model_name or not str(model_name).strip():
        raise ConfigError("model_name: empty; pass the registered model name (-n NAME)")
    if model_version is None or str(model_version).strip() == "":
        raise ConfigError(f"model_version: missing for model {model_name!r}; pass a version number (-v 3) "
                          "or an alias (-v champion)")
    return _reference(str(model_name).strip(), str(model_version).strip(), "model_version")


def _parse_models_uri(uri: str) -> ModelReference:
    prefix = "models:/"
    if not uri.startswith(prefix):
        raise ConfigError(f"model_uri: {uri!r} is not a registry URI; use models:/NAME/VERSION or "
                          "models:/NAME@ALIAS")
    path = uri[len(prefix):].strip("/")
    if "@" in path:
        name, _, alias = path.rpartition("@")
        if not name or not alias:
            raise ConfigError(f"model_uri: {uri!r} needs a name and an alias: models:/NAME@ALIAS")
        return _reference(name, alias, "model_uri", force_alias=True)
    name, _, version = path.rpartition("/")
    if not name or not version:
        raise ConfigError(f"model_uri: {uri!r} needs a name and a version: models:/NAME/VERSION or "
                          "models:/NAME@ALIAS")
    return _reference(name, version, "model_uri")


def _reference(name: str, version: str, field: str, force_alias: bool = False) -> ModelReference:
    if version.startswith("@"):
        version, force_alias = version[1:], True
    if not force_alias and _NUMERIC.fullmatch(version):
        return ModelReference(name=name, version=str(int(version)))
    if not _ALIAS.fullmatch(version):
        raise ConfigError(f"{field}: {version!r} is neither a version number nor a valid alias "
                          "(letters, digits, '_' and '-'); e.g. 3 or champion")
    return ModelReference(name=name, alias=version)


def resolve_tracking_uri(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    import mlflow

    default = mlflow.get_tracking_uri()
    logger.warning("MLFLOW_TRACKING_URI is not set; using MLflow's default %s", default)
    return default


def check_reachable(tracking_uri: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Fail fast (seconds, not MLflow's minutes of retries) when an HTTP tracking server is down."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ModelSourceUnreachable(
            f"MLflow tracking server {tracking_uri} is unreachable ({exc.strerror or exc}); check "
            "MLFLOW_TRACKING_URI and that the server is up. A version already in the model cache "
            "loads without the server only when pinned by number (-v 3), not by alias") from exc


class Registry:
    """MlflowClient calls with errors translated into ModelLoadError messages a user can act on."""

    def __init__(self, tracking_uri: str):
        from mlflow import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            if _looks_like_connection_failure(exc):
                raise ModelSourceUnreachable(f"MLflow at {self.uri}: {what} failed, server unreachable: "
                                             f"{_short(exc)}") from exc
            raise ModelLoadError(f"MLflow at {self.uri}: {what} failed: {_short(exc)}") from exc
        except OSError as exc:
            raise ModelSourceUnreachable(f"MLflow at {self.uri}: {what} failed: {exc}") from exc

    def resolve(self, ref: ModelReference) -> Any:
        """The ModelVersion for a reference (alias and ``latest`` resolved); READY or an error."""
        from mlflow.exceptions import MlflowException

        try:
            if ref.version is not None:
                found = self.call(f"get version {ref.version} of {ref.name!r}",
                                  self.client.get_model_version, ref.name, ref.version)
            elif ref.alias == LATEST:
                found = self._latest(ref.name)
            else:
                found = self.call(f"resolve alias {ref.alias!r} of {ref.name!r}",
                                  self.client.get_model_version_by_alias, ref.name, ref.alias)
        except MlflowException as exc:
            raise self._not_found(ref) from exc
        status = str(getattr(found, "status", "READY"))
        if status != "READY":
            raise ModelLoadError(f"registered model {ref.name!r} version {found.version} is {status}, not "
                                 f"READY ({found.status_message or 'no message'}); wait or register it again")
        if ref.alias:
            logger.info("resolved %s to version %s", ref.label, found.version)
        return found

    def _latest(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        versions = self._versions(name)
        if not versions:
            raise MlflowException(f"no versions of {name}", error_code="RESOURCE_DOES_NOT_EXIST")
        return self.call(f"get version {versions[-1]} of {name!r}",
                         self.client.get_model_version, name, str(versions[-1]))

    def _versions(self, name: str) -> list[int]:
        escaped = name.replace("'", "\\'")
        found = self.call(f"list versions of {name!r}", self.client.search_model_versions,
                          filter_string=f"name='{escaped}'")
        return sorted(int(mv.version) for mv in found)

    def _not_found(self, ref: ModelReference) -> ModelNotFoundError:
        """Work out what is missing (model, version or alias) and list what exists instead."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.call(f"get registered model {ref.name!r}", self.client.get_registered_model, ref.name)
        except MlflowException:
            known = self._some_model_names()
            return ModelNotFoundError(f"no registered model {ref.name!r} in MLflow at {self.uri}; registered "
                                      f"models: {known or 'none'}")
        if ref.version is not None or ref.alias == LATEST:
            versions = self._versions(ref.name)
            wanted = f"version {ref.version}" if ref.version is not None else "versions"
            return ModelNotFoundError(f"registered model {ref.name!r} has no {wanted}; available: "
                                      f"{_listing([str(v) for v in versions]) or 'none'}")
        aliases = getattr(model, "aliases", None) or {}
        listed = _listing([f"{alias} -> {version}" for alias, version in sorted(aliases.items())])
        return ModelNotFoundError(f"registered model {ref.name!r} has no alias {ref.alias!r}; aliases: "
                                  f"{listed or 'none set'}. Set one with "
                                  "MlflowClient().set_registered_model_alias(name, alias, version) or pass a "
                                  "version number")

    def _some_model_names(self) -> str:
        from mlflow.exceptions import MlflowException

        try:
            models = self.call("list registered models", self.client.search_registered_models,
                               max_results=MAX_LISTED + 1)
        except MlflowException:
            return ""
        return _listing(sorted(m.name for m in models))

    def download(self, model_version: Any, destination: Path) -> CacheMarker:
        """Model files into ``destination/model``, the pipeline config (if any) next to them."""
        import mlflow

        name, version = model_version.name, str(model_version.version)
        artifact_uri = self.call(f"get download URI of {name!r} version {version}",
                                 self.client.get_model_version_download_uri, name, version)
        staging = destination / ".download"
        logger.info("downloading %s version %s from %s", name, version, artifact_uri)
        fetched = self.call(f"download {artifact_uri}", mlflow.artifacts.download_artifacts,
                            artifact_uri=artifact_uri, dst_path=str(staging), tracking_uri=self.uri)
        os.rename(fetched, destination / MODEL_SUBDIR)
        shutil.rmtree(staging, ignore_errors=True)
        config_origin = self._fetch_config(model_version, destination)
        return CacheMarker(
            model_name=name, version=version, source=f"models:/{name}/{version}", tracking_uri=self.uri,
            run_id=model_version.run_id or None, artifact_uri=artifact_uri,
            config_file=CONFIG_NAME if config_origin else None, config_origin=config_origin)

    def _fetch_config(self, model_version: Any, destination: Path) -> str | None:
        """Copy the first pipeline config found (see module docstring) to destination; its origin."""
        name, run_id = model_version.name, model_version.run_id
        target = destination / CONFIG_NAME
        run_files = self._run_files(run_id, name) if run_id else set()
        for file_name in CONFIG_FILE_NAMES:
            if f"{name}/{file_name}" in run_files:
                return self._download_run_file(run_id, f"{name}/{file_name}", target, destination)
        for file_name in CONFIG_FILE_NAMES:
            in_model = destination / MODEL_SUBDIR / file_name
            if in_model.is_file():
                shutil.copyfile(in_model, target)
                return f"model artifact {file_name}"
        root_files = self._run_files(run_id, None) if run_id else set()
        for file_name in CONFIG_FILE_NAMES:
            if file_name in root_files:
                return self._download_run_file(run_id, file_name, target, destination)
        logger.info("model %s version %s has no %s in its run or model artifacts", name,
                    model_version.version, " / ".join(CONFIG_FILE_NAMES))
        return None

    def _run_files(self, run_id: str, directory: str | None) -> set[str]:
        from mlflow.exceptions import MlflowException

        try:
            listed = self.call(f"list artifacts of run {run_id}", self.client.list_artifacts, run_id, directory)
        except MlflowException as exc:  # run deleted / not visible: the model itself is still usable
            logger.warning("cannot list artifacts of run %s (%s); looking for the config elsewhere",
                           run_id, _short(exc))
            return set()
        return {info.path for info in listed if not info.is_dir}

    def _download_run_file(self, run_id: str, path: str, target: Path, destination: Path) -> str:
        staging = destination / ".config-download"
        fetched = self.call(f"download {path} of run {run_id}", self.client.download_artifacts,
                            run_id, path, str(staging))
        os.rename(fetched, target)
        shutil.rmtree(staging, ignore_errors=True)
        return f"runs:/{run_id}/{path}"


def _looks_like_connection_failure(exc: Exception) -> bool:
    text = str(exc)
    return any(marker in text for marker in ("Max retries exceeded", "Connection refused", "ConnectionError",
                                             "Failed to establish", "timed out", "Name or service not known"))


def _short(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _listing(items: list[str]) -> str:
    if len(items) > MAX_LISTED:
        return ", ".join(items[:MAX_LISTED]) + f", ... ({len(items)} in total)"
    return ", ".join(items)


def load_model_directory(model_dir: Path) -> tuple[ModelAdapter, str]:
    """Load a downloaded MLflow model directory by flavour; (adapter, how it was unwrapped)."""
    import mlflow
    from mlflow.models import Model

    try:
        flavors = Model.load(str(model_dir)).flavors
    except Exception as exc:
        raise ModelLoadError(f"{model_dir} is not a readable MLflow model (MLmodel: {_short(exc)})") from exc
    loader_module = flavors.get("python_function", {}).get("loader_module")
    try:
        if loader_module == "mlflow.pyfunc.model":
            return _load_python_model(mlflow.pyfunc.load_model(str(model_dir)))
        if "pytorch" in flavors:
            torch_model = mlflow.pytorch.load_model(str(model_dir), map_location="cpu")
            if callable(getattr(torch_model, "evaluate", None)) or _is_torch_module(torch_model):
                return adapt_model(torch_model), f"pytorch {type(torch_model).__name__}"
        return PyfuncPredictAdapter(mlflow.pyfunc.load_model(str(model_dir))), f"pyfunc predict ({loader_module})"
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the MLflow model in {model_dir}: {type(exc).__name__}: {_short(exc)}. The loading "
            f"environment needs the packages the model was logged with (see {model_dir}/requirements.txt)"
        ) from exc


def _is_torch_module(obj: Any) -> bool:
    from lume_model.models import TorchModule

    return isinstance(obj, TorchModule)


def _load_python_model(pyfunc_model: Any) -> tuple[ModelAdapter, str]:
    python_model = pyfunc_model.unwrap_python_model()
    wrapper = type(python_model).__name__
    for accessor in ("get_lume_model", "get_model"):
        if callable(getattr(python_model, accessor, None)):
            inner = getattr(python_model, accessor)()
            return adapt_model(inner), f"pyfunc {wrapper}.{accessor}() -> {type(inner).__name__}"
    if callable(getattr(python_model, "evaluate", None)):
        return EvaluateAdapter(python_model), f"pyfunc {wrapper}.evaluate"
    return PyfuncPredictAdapter(pyfunc_model), f"pyfunc {wrapper}.predict"


def load_registered_model(ref: ModelReference, *, tracking_uri: str | None = None,
                          cache: ModelCache | None = None, refresh: bool = False) -> ModelAdapter:
    """Resolve, download once (cache), load. A cached numeric version needs no MLflow at all."""
    cache = cache or ModelCache()
    entry = cache.lookup(ref.name, ref.version) if ref.version and not refresh else None
    if entry is not None:
        logger.info("model cache hit: %s in %s (MLflow not contacted)", ref.label, entry.path)
    else:
        uri = resolve_tracking_uri(tracking_uri)
        check_reachable(uri)
        registry = Registry(uri)
        model_version = registry.resolve(ref)
        version = str(model_version.version)
        entry = None if refresh else cache.lookup(ref.name, version)
        if entry is None:
            entry = cache.populate(ref.name, version, lambda tmp: registry.download(model_version, tmp),
                                   replace=refresh)
        else:
            logger.info("model cache hit: %s version %s in %s", ref.label, version, entry.path)
    return _load_cached(entry, ref)


def _load_cached(entry: CachedModel, ref: ModelReference) -> ModelAdapter:
    marker = entry.marker
    try:
        adapter, how = load_model_directory(entry.model_dir)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc} (cache entry {entry.path}; load with refresh=True to re-download)") from exc
    requested = f" via {ref.label}" if ref.alias else ""
    source = f"mlflow {marker.source}{requested} at {marker.tracking_uri} [{how}]"
    return adapter.describe(source, version=marker.version, config_path=entry.config_path)
