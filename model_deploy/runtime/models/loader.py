"""``load_model``: the one entry point the CLI and the pipeline use, whatever the model source."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model_deploy.runtime.errors import ConfigError
from model_deploy.runtime.models.base import ModelAdapter
from model_deploy.runtime.models.cache import ModelCache
from model_deploy.runtime.models.local import load_local_model
from model_deploy.runtime.models.mlflow_source import load_registered_model, parse_reference

logger = logging.getLogger(__name__)


def load_model(
    model_name: str | None = None,
    model_version: str | int | None = None,
    *,
    model_uri: str | None = None,
    local_path: str | os.PathLike | None = None,
    factory_class: str | None = None,
    tracking_uri: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
) -> ModelAdapter:
    """Load a model from exactly one source and wrap it as a ``ModelAdapter``.

    Args:
        model_name, model_version: a registered MLflow model; the version is a number ("3") or an
            alias ("champion"); "latest" is the highest version.
        model_uri: alternatively ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.
        local_path: alternatively a local model (see ``models.local``): a directory with
            ``model_factory.py``, ``file.py[:Name]`` or a lume-model ``.yml`` file.
        factory_class: factory class name for ``local_path`` .py files (default ``ModelFactory``).
        tracking_uri: MLflow tracking URI (default: ``MLFLOW_TRACKING_URI``).
        cache_dir: download cache root (default: ``MODEL_CACHE_DIR`` or ~/.cache/model-deploy/models).
        refresh: re-download a registry model even if the cache has it.

    Raises:
        ConfigError: the arguments are inconsistent (message names the argument and the fix).
        ModelNotFoundError / ModelSourceUnreachable / ModelLoadError: see their messages.
    """
    registry_requested = model_name is not None or model_version is not None or model_uri is not None
    if local_path is not None and registry_requested:
        raise ConfigError("local_path: a local model and a registry model (model_name/model_uri) are "
                          "alternatives; pass only one")
    if local_path is None and not registry_requested:
        raise ConfigError("model: nothing to load; pass model_name + model_version (MLflow), model_uri "
                          "(models:/NAME/VERSION) or local_path")
    if local_path is None and factory_class is not None:
        raise ConfigError("factory_class: only applies to local_path models")
    started = time.perf_counter()
    if local_path is not None:
        adapter = load_local_model(local_path, factory_class)
    else:
        reference = parse_reference(model_name, model_version, model_uri)
        cache = ModelCache(Path(cache_dir) if cache_dir is not None else None)
        adapter = load_registered_model(reference, tracking_uri=tracking_uri, cache=cache, refresh=refresh)
    logger.info("loaded model in %.2fs: %s (%s; inputs %s; outputs %s%s)", time.perf_counter() - started,
                adapter.source, adapter.kind, adapter.input_names or "undeclared",
                adapter.output_names or "undeclared",
                f"; config {adapter.config_path}" if adapter.config_path else "")
    return adapter


LOCAL_GETTERS = ("LocalModelGetter", "local")
MLFLOW_GETTERS = ("MLflowModelGetter", "MLflowModelGetterLegacy", "mlflow")


def load_model_from_getter(getter: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None,
                           field: str = "modules.model.config", **options: Any) -> ModelAdapter:
    """Load the model a poly-lithic model module names: ``{"type": "LocalModelGetter", "args":
    {"model_path": ..., "model_factory_class": ...}}`` or ``{"type": "MLflowModelGetter", "args":
    {"model_name": ..., "model_version": ...}}`` (or ``model_uri``). A relative ``model_path`` that
    does not exist from the working directory is taken relative to ``base_dir`` (the config file's
    directory). ``options`` (tracking_uri, cache_dir, refresh) go to ``load_model``."""
    if not isinstance(getter, Mapping):
        raise ConfigError(f"{field}: expected a mapping with type and args, got {type(getter).__name__}")
    kind = getter.get("type")
    args = getter.get("args") or {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"{field}.args: expected a mapping, got {type(args).__name__}")
    if kind in LOCAL_GETTERS:
        model_path = args.get("model_path")
        if not model_path:
            raise ConfigError(f"{field}.args.model_path: missing; the path of the model factory .py file")
        path = Path(str(model_path)).expanduser()
        if not path.is_absolute() and not path.exists() and base_dir is not None:
            path = Path(base_dir) / path
        return load_model(local_path=path, factory_class=args.get("model_factory_class"), **options)
    if kind in MLFLOW_GETTERS:
        unknown = set(args) - {"model_name", "model_version", "model_uri"}
        if unknown:
            raise ConfigError(f"{field}.args: unknown keys {', '.join(sorted(unknown))}; expected model_name "
                              "+ model_version, or model_uri")
        return load_model(model_name=args.get("model_name"), model_version=args.get("model_version"),
                          model_uri=args.get("model_uri"), **options)
    raise ConfigError(f"{field}.type: unknown model getter {kind!r}; expected one of "
                      f"{', '.join(LOCAL_GETTERS[:1] + MLFLOW_GETTERS[:1])}")
