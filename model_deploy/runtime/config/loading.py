"""Entry points: read a config (path, YAML text or mapping), pick its form, validate it, checksum it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from model_deploy.runtime.config.graph import graph_pipeline
from model_deploy.runtime.config.legacy import LEGACY_SECTIONS, legacy_pipeline
from model_deploy.runtime.config.models import PipelineConfig
from model_deploy.runtime.config.problems import logger, short_repr
from model_deploy.runtime.errors import ConfigError


class _DuplicateKeyWarningLoader(yaml.SafeLoader):
    """SafeLoader that warns about duplicate mapping keys (YAML silently keeps the last one)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                logger.warning("YAML line %d: duplicate key %r (first at line %d); the last one wins",
                               line, key, seen[key])
            seen.setdefault(key, line)
        except TypeError:  # unhashable key: the constructor below reports it
            pass
    return yaml.SafeLoader.construct_mapping(loader, node, deep=True)


_DuplicateKeyWarningLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, origin: str) -> Any:
    try:
        return yaml.load(text, Loader=_DuplicateKeyWarningLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        message = f"{origin}: YAML syntax error{where}: {problem}; fix the indentation/quoting there"
        raise ConfigError([message]) from None


def read_config_source(source: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    """The raw mapping from a path, YAML text or a dict."""
    if isinstance(source, Mapping):
        return source
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and _looks_like_path(source)):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found; pass the path of the pipeline YAML"]) from None
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
        origin = str(path)
    elif isinstance(source, str):
        text, origin = source, "config"
    else:
        raise ConfigError([f"config: expected a path, YAML text or a mapping, got {type(source).__name__}"])
    data = _parse_yaml(text, origin)
    if not isinstance(data, Mapping):
        raise ConfigError([f"{origin}: expected a YAML mapping with the pipeline sections, got {short_repr(data)}"])
    return data


def _looks_like_path(text: str) -> bool:
    # One line without a YAML mapping in it ("key: value" / "{...}") is a file name.
    if Path(text).suffix.lower() in (".yaml", ".yml", ".json") or Path(text).exists():
        return True
    return ": " not in text and not text.rstrip().endswith(":") and "{" not in text


def load_config(source: str | Path | Mapping[str, Any]) -> PipelineConfig:
    """Load and validate a pipeline config (legacy model_manager keys or poly-lithic ``modules:``).

    ``source`` is a path, YAML text or an already-parsed mapping. Raises ConfigError listing every
    problem found as ``field.path: problem; fix``.
    """
    raw = read_config_source(source)
    problems: list[str] = []
    legacy_keys = [key for key in LEGACY_SECTIONS[1:] if key in raw]
    if "modules" in raw and legacy_keys:
        raise ConfigError([
            f"modules: cannot be combined with the legacy sections ({', '.join(legacy_keys)}); "
            "use either modules: or input_data/input_data_to_model/.../output_data_to"
        ])
    if "modules" in raw:
        config = graph_pipeline(raw, problems)
    elif legacy_keys:
        config = legacy_pipeline(raw, problems)
    else:
        raise ConfigError([
            "config: no pipeline found; expected the model_manager sections "
            f"({', '.join(LEGACY_SECTIONS)}) or poly-lithic's modules: {{NAME: {{type, pub, sub, config}}}}"
        ])
    if problems or config is None:
        raise ConfigError(problems or ["config: invalid pipeline"])
    return config


def config_checksum(config: PipelineConfig | str | Path | Mapping[str, Any]) -> str:
    """sha256 of a canonical JSON of the normalised config (key order and YAML form don't matter)."""
    if not isinstance(config, PipelineConfig):
        config = load_config(config)
    data = config.model_dump(mode="json", exclude={"source_format"})
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
