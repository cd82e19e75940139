"""Local models (``model-manager -l PATH``): factory files and lume-model YAML files.

``PATH`` may be:
  * ``file.py:Name`` - ``Name`` in that file: a class (instantiated without arguments, then
    ``get_model()`` is called - poly-lithic's ``LocalModelGetter`` convention) or a function
    returning the model (or returning a factory with ``get_model()``);
  * ``file.py`` - the class ``factory_class`` (default ``ModelFactory``) in that file;
  * a directory - its ``model_factory.py`` (or poly-lithic's ``model_definition.py``) as above, else
    the single lume-model YAML file in it; with ``factory_class="other.py"`` or
    ``"other.py:Name"`` (e.g. from ``deployment.model_factory``) that file in the directory;
  * ``model.yml`` / ``module.yml`` - a lume-model file (``TorchModel``, ``TorchModule`` or another
    lume-model built-in), which references its .pt and transformer files relative to itself.
The model returned must be a lume-model model or have ``evaluate(dict) -> dict``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from model_deploy.runtime.models.adapters import adapt_model
from model_deploy.runtime.models.base import ModelAdapter, ModelLoadError, ModelNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_FACTORY_CLASS = "ModelFactory"
FACTORY_FILE_NAMES = ("model_factory.py", "model_definition.py")
LUME_SUFFIXES = (".yml", ".yaml")


def split_factory_spec(spec: str | Path) -> tuple[Path, str | None]:
    """``path/file.py:Name`` -> (path/file.py, "Name"); anything else -> (path, None)."""
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and head.endswith(".py") and tail.isidentifier():
        return Path(head), tail
    return Path(text), None


def load_local_model(spec: str | Path, factory_class: str | None = None) -> ModelAdapter:
    path, named = split_factory_spec(spec)
    path = path.expanduser()
    if factory_class and ".py" in factory_class and path.is_dir():
        factory_file, factory_name = split_factory_spec(factory_class)
        path, named, factory_class = path / factory_file, named or factory_name, None
    name = named or factory_class
    if not path.exists():
        raise ModelNotFoundError(f"local model {spec}: {path} does not exist; pass a directory with "
                                 "model_factory.py, a file.py[:FactoryClass] or a lume-model .yml file")
    if path.is_dir():
        path = _pick_file_in_directory(path)
    if path.suffix in LUME_SUFFIXES:
        if name:
            raise ModelLoadError(f"local model {spec}: {path.name} is a lume-model YAML file; a factory "
                                 f"name ({name}) only applies to .py files")
        return load_lume_file(path)
    if path.suffix != ".py":
        raise ModelLoadError(f"local model {spec}: {path.name} is neither a .py factory file nor a lume-model "
                             ".yml file")
    return load_factory_file(path, name or DEFAULT_FACTORY_CLASS)


def _pick_file_in_directory(directory: Path) -> Path:
    for file_name in FACTORY_FILE_NAMES:
        if (directory / file_name).is_file():
            return directory / file_name
    lume_files = [p for p in sorted(directory.iterdir()) if p.suffix in LUME_SUFFIXES and _is_lume_yaml(p)]
    if len(lume_files) == 1:
        return lume_files[0]
    if len(lume_files) > 1:
        names = ", ".join(p.name for p in lume_files)
        raise ModelLoadError(f"local model {directory}: several lume-model files ({names}); pass the one to "
                             "use, e.g. -l " + str(lume_files[0]))
    raise ModelNotFoundError(f"local model {directory}: no {' or '.join(FACTORY_FILE_NAMES)} and no lume-model "
                             f".yml file; add a model_factory.py defining class {DEFAULT_FACTORY_CLASS} with "
                             "get_model(), or pass file.py:FactoryClass")


def _is_lume_yaml(path: Path) -> bool:
    try:
        with open(path) as handle:
            content = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(content, dict) and "model_class" in content


def load_lume_file(path: Path) -> ModelAdapter:
    """A lume-model YAML model file, by its ``model_class`` (TorchModel, TorchModule, ...)."""
    try:
        with open(path) as handle:
            content = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"lume-model file {path}: cannot read YAML ({exc})") from exc
    if not isinstance(content, dict) or "model_class" not in content:
        raise ModelLoadError(f"lume-model file {path}: no model_class key; is it a file written by a lume-model "
                             "model's dump()?")
    from lume_model.models import get_model, registered_models

    model_class = content["model_class"]
    try:
        cls = get_model(model_class)
    except KeyError:
        built_in = ", ".join(m.__name__ for m in registered_models)
        raise ModelLoadError(f"lume-model file {path}: model_class {model_class!r} is not a lume-model built-in "
                             f"({built_in}); load custom model classes through a model_factory.py") from None
    try:
        model = cls(str(path))
    except Exception as exc:
        raise ModelLoadError(f"lume-model file {path}: cannot build {model_class}: {type(exc).__name__}: {exc}. "
                             "Check that the .pt/transformer files it names exist next to it") from exc
    return adapt_model(model).describe(f"lume-model file {path} ({model_class})")


def load_factory_file(path: Path, name: str) -> ModelAdapter:
    module = _import_file(path)
    target = getattr(module, name, None)
    if target is None:
        candidates = [attr for attr, value in vars(module).items()
                      if isinstance(value, type) and callable(getattr(value, "get_model", None))
                      and value.__module__ == module.__name__]
        hint = f"; classes with get_model() in it: {', '.join(candidates)}" if candidates else ""
        raise ModelNotFoundError(f"model factory {path}: no {name!r} defined{hint}. Define class {name} with "
                                 f"get_model(), or pass {path}:OtherName")
    model = _call_factory(path, name, target)
    adapter = adapt_model(model)
    return adapter.describe(f"local factory {path}:{name} -> {type(model).__name__}")


def _call_factory(path: Path, name: str, target: Any) -> Any:
    try:
        if isinstance(target, type):
            instance = target()
            if not callable(getattr(instance, "get_model", None)):
                raise ModelLoadError(f"model factory {path}:{name} has no get_model() method; add "
                                     "get_model(self) returning the model")
            return instance.get_model()
        if callable(target):
            produced = target()
            getter = getattr(produced, "get_model", None)
            return getter() if callable(getter) and not callable(getattr(produced, "evaluate", None)) else produced
    except ModelLoadError:
        raise
    except Exception as exc:
        logger.debug("model factory %s:%s failed", path, name, exc_info=True)
        raise ModelLoadError(f"model factory {path}:{name} failed: {type(exc).__name__}: {exc}") from exc
    raise ModelLoadError(f"model factory {path}:{name} is a {type(target).__name__}, not a class or function")


def _import_file(path: Path) -> ModuleType:
    """Import a .py file by path (fresh each call, so an edited file is re-read); its directory goes
    on sys.path so it can import its siblings."""
    path = path.resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"model_deploy_local_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"model factory {path}: not importable as a Python module")
    module = importlib.util.module_from_spec(spec)
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[module_name] = module  # pickle/dataclasses look classes up by module name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        logger.debug("importing model factory %s failed", path, exc_info=True)
        where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
        raise ModelLoadError(f"model factory {path}: import failed{where}: {type(exc).__name__}: {exc}") from exc
    return module
