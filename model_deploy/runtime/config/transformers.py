"""Transformer sections: validating ``{type, config}`` and listing the names each one reads and writes.

``transformer_inputs`` / ``transformer_outputs`` give every name with the YAML path that names it,
so the cross-checks can point at the exact line to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from model_deploy.runtime.config.models import (
    TRANSFORMER_CONFIG_MODELS,
    TRANSFORMER_TYPES,
    CAImageTransformerConfig,
    CompoundTransformerConfig,
    PassThroughTransformerConfig,
    SimpleTransformerConfig,
    TransformerConfig,
    TransformerSpec,
    canonical_transformer_type,
    formula_symbols,
)
from model_deploy.runtime.config.problems import (
    did_you_mean,
    join_path,
    short_repr,
    validate_pydantic,
    warn_unknown_keys,
)
from model_deploy.runtime.errors import ConfigError


def parse_transformer_spec(raw: Any, path: str = "") -> TransformerSpec:
    """Validate ``{type, config}`` of a transformer; raises ConfigError with paths under ``path``."""
    problems: list[str] = []
    spec = validate_transformer_spec(raw, path, problems)
    if problems or spec is None:
        raise ConfigError(problems or [f"{path or 'transformer'}: invalid transformer"])
    return spec


def parse_transformer_config(type_name: str, config: Any, path: str = "") -> TransformerConfig:
    """Validate the ``config`` of a transformer of ``type_name``; problem paths start at ``path``."""
    canonical = canonical_transformer_type(type_name)
    if canonical is None:
        raise ConfigError([f"type: unknown transformer type {short_repr(type_name)}; expected one of "
                           f"{', '.join(TRANSFORMER_TYPES)}"])
    problems: list[str] = []
    parsed = validate_transformer_config(canonical, config, path, problems)
    if problems or parsed is None:
        raise ConfigError(problems or [f"{path or 'config'}: invalid {canonical} config"])
    return parsed


def validate_transformer_spec(raw: Any, path: str, problems: list[str]) -> TransformerSpec | None:
    """The spec of ``{type, config}``, or None after appending its problems (paths under ``path``)."""
    if not isinstance(raw, Mapping):
        problems.append(f"{path or 'transformer'}: expected a mapping with type and config, got {short_repr(raw)}")
        return None
    raw_type = raw.get("type")
    canonical = canonical_transformer_type(raw_type)
    if raw_type is None:
        problems.append(
            f"{join_path(path, 'type')}: required but missing; expected one of {', '.join(TRANSFORMER_TYPES)}"
        )
        return None
    if canonical is None:
        problems.append(
            f"{join_path(path, 'type')}: unknown transformer type {short_repr(raw_type)}"
            f"{did_you_mean(str(raw_type).removeprefix('transformer.'), TRANSFORMER_TYPES)}; "
            f"expected one of {', '.join(TRANSFORMER_TYPES)} (alias CAImageTransfomer)"
        )
        return None
    parsed = validate_transformer_config(canonical, raw.get("config"), join_path(path, "config"), problems)
    if parsed is None:
        return None
    return TransformerSpec.model_construct(type=canonical, config=parsed)


def validate_transformer_config(
    canonical: str, config: Any, path: str, problems: list[str]
) -> TransformerConfig | None:
    """The config of a ``canonical`` transformer type, or None after appending its problems."""
    where = path or "config"
    if config is None:
        problems.append(f"{where}: required but missing; add the {canonical} config")
        return None
    if not isinstance(config, Mapping):
        problems.append(f"{where}: expected a mapping, got {short_repr(config)}")
        return None
    if canonical == "CompoundTransformer":
        parsed = _validate_compound_config(config, path, problems)
    else:
        parsed = validate_pydantic(TRANSFORMER_CONFIG_MODELS[canonical], config, path, problems)
    if parsed is not None and parsed.model_extra:
        warn_unknown_keys(config, TRANSFORMER_CONFIG_MODELS[canonical].model_fields, where)
    return parsed  # type: ignore[return-value]


def _validate_compound_config(
    config: Mapping[str, Any], path: str, problems: list[str]
) -> CompoundTransformerConfig | None:
    # Validated part by part (not by pydantic) so each problem keeps the path of its part.
    raw_parts = config.get("transformers")
    parts_path = join_path(path, "transformers")
    if not isinstance(raw_parts, Mapping) or not raw_parts:
        problems.append(
            f"{parts_path}: {'required but missing' if raw_parts is None else 'expected a non-empty mapping'}; "
            "add transformers: {NAME: {type: ..., config: ...}}"
        )
        return None
    parts: dict[str, TransformerSpec] = {}
    for name, raw in raw_parts.items():
        part = validate_transformer_spec(raw, join_path(parts_path, str(name)), problems)
        if part is not None:
            parts[str(name)] = part
    if len(parts) != len(raw_parts):
        return None
    producer: dict[str, str] = {}
    for name, part in parts.items():
        for output, output_path in transformer_outputs(part, join_path(parts_path, name)):
            if output in producer:
                problems.append(
                    f"{output_path}: output {output!r} is also produced by {producer[output]!r}; "
                    "each output must come from one transformer"
                )
            producer.setdefault(output, name)
    return CompoundTransformerConfig.model_construct(
        transformers=parts, **{k: v for k, v in config.items() if k != "transformers"}
    )


@dataclass(frozen=True)
class Requirement:
    """An input a transformer needs, where it is named in the YAML, and its declared symbols."""

    name: str
    path: str
    declared: frozenset[str] | None  # SimpleTransformer ``symbols``; None for other types


def transformer_inputs(spec: TransformerSpec, path: str = "") -> list[Requirement]:
    """Every input name ``spec`` needs, with the YAML path that names it."""
    config = spec.config
    variables_path = join_path(path, "config", "variables")
    if isinstance(config, SimpleTransformerConfig):
        declared = frozenset(config.symbols)
        return [
            Requirement(symbol, join_path(variables_path, out, "formula"), declared)
            for out, variable in config.variables.items()
            for symbol in formula_symbols(variable.formula)
        ]
    if isinstance(config, CAImageTransformerConfig):
        return [
            Requirement(getattr(channels, field), join_path(variables_path, image, field), None)
            for image, channels in config.variables.items()
            for field in ("img_ch", "img_x_ch", "img_y_ch")
        ]
    if isinstance(config, PassThroughTransformerConfig):
        return [Requirement(source, join_path(variables_path, out), None) for out, source in config.variables.items()]
    if isinstance(config, CompoundTransformerConfig):
        return [
            requirement
            for name, part in config.transformers.items()
            for requirement in transformer_inputs(part, join_path(path, "config", "transformers", name))
        ]
    raise TypeError(f"unknown transformer config {type(config).__name__}")


def transformer_outputs(spec: TransformerSpec, path: str = "") -> list[tuple[str, str]]:
    """Every output name of ``spec`` with the YAML path that defines it."""
    config = spec.config
    if isinstance(config, CompoundTransformerConfig):
        return [
            output
            for name, part in config.transformers.items()
            for output in transformer_outputs(part, join_path(path, "config", "transformers", name))
        ]
    variables = config.variables  # type: ignore[union-attr]
    return [(str(out), join_path(path, "config", "variables", out)) for out in variables]

