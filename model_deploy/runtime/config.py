"""Pipeline configuration: the model_manager YAML (legacy keys) and poly-lithic's ``modules:`` graph.

Both forms are normalised into one ``PipelineConfig``: the linear chain

    input interface -> input transformer -> model -> output transformer -> output interface

``load_config`` collects every problem it finds and raises one ``ConfigError`` listing them, each
as ``field.path: what is wrong; fix``. Pydantic errors are translated into such lines; no
pydantic traceback reaches the user. Unknown keys are logged as warnings (real configs carry
extras) instead of failing.

Decisions worth knowing:

* ``outputs_model`` entries written ``type:"scalar"`` (no space; YAML reads the whole line as a
  string) are read as that type, with a warning, so the seed's Example 2 loads unchanged.
* ``deployment.rate`` is the maximum number of evaluations per second; ``0`` (seen in poly-lithic
  configs) means "no limit" and is stored as ``None``.
* A poly-lithic graph that reads and writes through ONE interface module (its usual shape) is split:
  ``input.variables`` keeps the PVs the input transformer reads, ``output.variables`` the PVs the
  output transformer writes, and ``shared_interface`` is True. Monitoring the written PVs as inputs
  would make every put trigger another evaluation.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from model_deploy.runtime.errors import ConfigError
from model_deploy.runtime.formula import compile_formula

logger = logging.getLogger(__name__)

INTERFACE_METHODS: tuple[str, ...] = ("p4p", "p4p_server", "k2eg")
VARIABLE_TYPES: tuple[str, ...] = ("scalar", "image", "array", "waveform")
TRANSFORMER_TYPES: tuple[str, ...] = (
    "SimpleTransformer",
    "ReverseTransformer",
    "CAImageTransformer",
    "PassThroughTransformer",
    "CompoundTransformer",
)
# Spellings found in real configs, mapped to the canonical type name (lookups are case-sensitive).
TRANSFORMER_ALIASES: dict[str, str] = {"CAImageTransfomer": "CAImageTransformer"}

LEGACY_SECTIONS: tuple[str, ...] = (
    "deployment",
    "input_data",
    "input_data_to_model",
    "outputs_model",
    "output_model_to_data",
    "output_data_to",
)
GRAPH_SECTIONS: tuple[str, ...] = ("deployment", "modules")
MODULE_KEYS: tuple[str, ...] = ("name", "type", "pub", "sub", "module_args", "config")
MODULE_KINDS: tuple[str, ...] = ("interface", "transformer", "model")

_CHAIN = "interface -> transformer -> model -> transformer -> interface"
_YAML_TYPE_QUIRK = re.compile(r"\s*type\s*:\s*[\"']?([A-Za-z_]+)[\"']?\s*")

VariableType = Literal["scalar", "image", "array", "waveform"]


def canonical_transformer_type(name: Any) -> str | None:
    """The canonical transformer type for ``name`` (``transformer.`` prefix and typo aliases allowed)."""
    if not isinstance(name, str):
        return None
    bare = name.removeprefix("transformer.")
    bare = TRANSFORMER_ALIASES.get(bare, bare)
    return bare if bare in TRANSFORMER_TYPES else None


# ------------------------------------------------------------------------------ shared pieces


class ImageSize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: PositiveInt = Field(description="columns")
    y: PositiveInt = Field(description="rows")


class VariableSpec(BaseModel):
    """One control-system variable. Extra keys (mode, length, ...) are kept for the interfaces."""

    model_config = ConfigDict(extra="allow")

    name: str
    proto: Literal["pva", "ca"] = "pva"
    type: VariableType = "scalar"
    image_size: ImageSize | None = None
    default: Any = None


class InterfaceSpec(BaseModel):
    """A system interface and its variables; extra settings (EPICS_PVA_NAME_SERVERS, ...) are kept."""

    model_config = ConfigDict(extra="allow")

    method: Literal["p4p", "p4p_server", "k2eg"]
    variables: dict[str, VariableSpec] = Field(min_length=1)


class OutputSpec(BaseModel):
    """One declared model output (``outputs_model.config.variables``)."""

    model_config = ConfigDict(extra="allow")

    type: VariableType = "scalar"
    image_size: ImageSize | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_entry_is_scalar(cls, data: Any) -> Any:
        return {} if data is None else data


class DeploymentSettings(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = "continuous"
    rate: float | None = Field(default=None, gt=0, description="max evaluations per second")

    @field_validator("rate", mode="before")
    @classmethod
    def _zero_means_unlimited(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number of evaluations per second, got a boolean")
        return None if value == 0 else value


# ------------------------------------------------------------------------------ transformers


class FormulaVariable(BaseModel):
    """``{formula: "..."}``; other keys (e.g. ``type: ca`` in the seed) are kept and ignored."""

    model_config = ConfigDict(extra="allow")

    formula: str

    @field_validator("formula", mode="before")
    @classmethod
    def _numbers_are_constants(cls, value: Any) -> Any:
        # An unquoted YAML number (formula: 1.85) is a constant formula.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return repr(value)
        return value

    @field_validator("formula")
    @classmethod
    def _must_compile(cls, value: str) -> str:
        formula_symbols(value)  # raises FormulaError (a ValueError) with column and expectation
        return value


class SimpleTransformerConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    symbols: list[str] = Field(default_factory=list)
    variables: dict[str, FormulaVariable] = Field(min_length=1)


class CAImageChannels(BaseModel):
    model_config = ConfigDict(extra="allow")

    img_ch: str
    img_x_ch: str
    img_y_ch: str
    # poly-lithic's key: how the flat array was unfolded. The result is (rows, cols) either way.
    unfold: Literal["row_major", "column_major"] = "row_major"


class CAImageTransformerConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    variables: dict[str, CAImageChannels] = Field(min_length=1)


class PassThroughTransformerConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    variables: dict[str, str] = Field(min_length=1, description="output name -> input name")


class CompoundTransformerConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    transformers: dict[str, "TransformerSpec"] = Field(min_length=1)


TransformerConfig = Union[
    SimpleTransformerConfig, CAImageTransformerConfig, PassThroughTransformerConfig, CompoundTransformerConfig
]
TRANSFORMER_CONFIG_MODELS: dict[str, type[BaseModel]] = {
    "SimpleTransformer": SimpleTransformerConfig,
    "ReverseTransformer": SimpleTransformerConfig,
    "CAImageTransformer": CAImageTransformerConfig,
    "PassThroughTransformer": PassThroughTransformerConfig,
    "CompoundTransformer": CompoundTransformerConfig,
}


class TransformerSpec(BaseModel):
    """A transformer: canonical ``type`` and its validated ``config``."""

    type: str
    config: TransformerConfig

    @model_validator(mode="before")
    @classmethod
    def _config_model_by_type(cls, data: Any) -> Any:
        # Pick the config model from the type, not by trying every union member.
        if isinstance(data, Mapping) and isinstance(data.get("config"), Mapping):
            canonical = canonical_transformer_type(data.get("type"))
            if canonical:
                model = TRANSFORMER_CONFIG_MODELS[canonical]
                return {**data, "type": canonical, "config": model.model_validate(data["config"])}
        return data

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        canonical = canonical_transformer_type(value)
        if canonical is None:
            raise ValueError(f"unknown transformer type {value!r}; expected one of {', '.join(TRANSFORMER_TYPES)}")
        return canonical


CompoundTransformerConfig.model_rebuild()


# ------------------------------------------------------------------------------ the pipeline


class ModelSpec(BaseModel):
    """The graph form's model module (e.g. ``model.SimpleModel`` with a getter type and args)."""

    type: str = "model.SimpleModel"
    config: dict[str, Any] = Field(default_factory=dict)


class ModuleNames(BaseModel):
    """Module names of the chain; the legacy form gets these defaults."""

    input: str = "input_interface"
    input_transform: str = "input_transformer"
    model: str = "model"
    output_transform: str = "output_transformer"
    output: str = "output_interface"


class ModuleConfig(BaseModel):
    """One poly-lithic module (the DESIGN's graph form)."""

    name: str
    type: str
    pub: list[str] = Field(default_factory=list)
    sub: list[str] = Field(default_factory=list)
    module_args: dict[str, Any] | None = None
    config: Any = None


class PipelineConfig(BaseModel):
    """The normalised pipeline, whichever YAML form it was read from."""

    model_config = ConfigDict(protected_namespaces=())

    deployment: DeploymentSettings = Field(default_factory=DeploymentSettings)
    input: InterfaceSpec
    input_transform: TransformerSpec
    model_outputs: dict[str, OutputSpec] = Field(default_factory=dict)
    output_transform: TransformerSpec
    output: InterfaceSpec
    model_module: ModelSpec | None = None
    module_names: ModuleNames = Field(default_factory=ModuleNames)
    shared_interface: bool = False  # graph form: one interface module both reads and writes
    source_format: Literal["legacy", "modules"] = "legacy"

    @property
    def modules(self) -> dict[str, ModuleConfig]:
        """The chain as poly-lithic modules (topics named like poly-lithic's templates)."""
        names = self.module_names
        model = self.model_module or ModelSpec()
        outputs = {key: output.model_dump(exclude_none=True) for key, output in self.model_outputs.items()}
        model_config = {**model.config, "variables": outputs}
        modules = {
            names.input: _interface_module(names.input, self.input, pub=["in_interface"], sub=["get_all"]),
            names.input_transform: _transformer_module(names.input_transform, self.input_transform,
                                                       pub="in_transformer", sub="in_interface"),
            names.model: ModuleConfig(name=names.model, type=model.type, pub=["model"], sub=["in_transformer"],
                                      config=model_config),
            names.output_transform: _transformer_module(names.output_transform, self.output_transform,
                                                        pub="out_transformer", sub="model"),
        }
        if self.shared_interface:
            shared = modules[names.input]
            shared.sub.append("out_transformer")
            shared.config["variables"].update(self.output.model_dump(exclude_none=True)["variables"])
        else:
            modules[names.output] = _interface_module(names.output, self.output, pub=[], sub=["out_transformer"])
        return modules


def _interface_module(name: str, spec: InterfaceSpec, pub: list[str], sub: list[str]) -> ModuleConfig:
    return ModuleConfig(name=name, type=f"interface.{spec.method}", pub=pub, sub=sub,
                        config=spec.model_dump(exclude_none=True, exclude={"method"}))


def _transformer_module(name: str, spec: TransformerSpec, pub: str, sub: str) -> ModuleConfig:
    return ModuleConfig(name=name, type=f"transformer.{spec.type}", pub=[pub], sub=[sub],
                        config=spec.config.model_dump(exclude_none=True))


# ------------------------------------------------------------------------------ error text

_MISSING_HINTS = {
    "get_method": "add get_method: one of " + ", ".join(INTERFACE_METHODS),
    "put_method": "add put_method: one of " + ", ".join(INTERFACE_METHODS),
    "variables": "add variables: {NAME: {...}}",
    "formula": 'add formula: "<expression over PV names>"',
    "img_ch": "add img_ch: <PV holding the flat image array>",
    "img_x_ch": "add img_x_ch: <PV holding the column count>",
    "img_y_ch": "add img_y_ch: <PV holding the row count>",
    "name": "add name: <PV name>",
    "type": "add type",
    "config": "add config: {...}",
    "transformers": "add transformers: {NAME: {type: ..., config: ...}}",
}


_FIELD_FIXES = {
    "rate": "give the maximum evaluations per second (a number > 0), or 0 / omit it for no limit",
    "x": "give the number of columns (a positive integer)",
    "y": "give the number of rows (a positive integer)",
}


def _join(path: str, *parts: Any) -> str:
    text = path
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":  # pydantic's marker for an invalid dict key
            continue
        else:
            text = f"{text}.{part}" if text else str(part)
    return text


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _explain(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    got = error.get("input")
    ctx = error.get("ctx") or {}
    field = next((part for part in reversed(error["loc"]) if isinstance(part, str)), "")
    if kind == "missing":
        hint = _MISSING_HINTS.get(field, f"add {field}")
        return f"required but missing; {hint}"
    if kind == "literal_error":
        return f"got {_short(got)}; expected one of {ctx.get('expected')}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "too_short":
        return "must not be empty; list at least one entry"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {_short(got)}"
    if kind == "list_type":
        return f"expected a list, got {_short(got)}"
    if kind == "string_type":
        return f"expected a string, got {_short(got)}"
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling"
    fix = _FIELD_FIXES.get(field)
    message = error["msg"][0].lower() + error["msg"][1:]
    return f"{message} (got {_short(got)})" + (f"; {fix}" if fix else "")


def validation_problems(exc: ValidationError, path: str, remap: Callable[[tuple], str] | None = None) -> list[str]:
    """Turn a pydantic ValidationError into ``dotted.path: problem; fix`` lines."""
    problems = []
    for error in exc.errors(include_url=False):
        where = remap(error["loc"]) if remap else _join(path, *error["loc"])
        problems.append(f"{where}: {_explain(error)}")
    return problems


def _validate(model: type[BaseModel], data: Any, path: str, problems: list[str], **remap: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, path, **remap))
        return None


def _warn_unknown(raw: Mapping[str, Any], known: Iterable[str], path: str) -> None:
    known = list(known)
    unknown = [str(key) for key in raw if key not in known]
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        logger.warning("%s: ignoring unknown key %r%s; known keys: %s", path or "config", key, hint, ", ".join(known))


def _did_you_mean(value: Any, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# ------------------------------------------------------------------------------ formulas


@functools.lru_cache(maxsize=4096)
def formula_symbols(text: str) -> tuple[str, ...]:
    """Symbols of a formula, in order; raises FormulaError if it does not compile."""
    return compile_formula(text).symbols


# ------------------------------------------------------------------------------ transformer specs


def parse_transformer_spec(raw: Any, path: str = "") -> TransformerSpec:
    """Validate ``{type, config}`` of a transformer; raises ConfigError with paths under ``path``."""
    problems: list[str] = []
    spec = _transformer_spec(raw, path, problems)
    if problems or spec is None:
        raise ConfigError(problems or [f"{path or 'transformer'}: invalid transformer"])
    return spec


def parse_transformer_config(type_name: str, config: Any, path: str = "") -> TransformerConfig:
    """Validate the ``config`` of a transformer of ``type_name``; problem paths start at ``path``."""
    canonical = canonical_transformer_type(type_name)
    if canonical is None:
        raise ConfigError([f"type: unknown transformer type {_short(type_name)}; expected one of "
                           f"{', '.join(TRANSFORMER_TYPES)}"])
    problems: list[str] = []
    parsed = _transformer_config(canonical, config, path, problems)
    if problems or parsed is None:
        raise ConfigError(problems or [f"{path or 'config'}: invalid {canonical} config"])
    return parsed


def _transformer_spec(raw: Any, path: str, problems: list[str]) -> TransformerSpec | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{path or 'transformer'}: expected a mapping with type and config, got {_short(raw)}")
        return None
    raw_type = raw.get("type")
    canonical = canonical_transformer_type(raw_type)
    if raw_type is None:
        problems.append(f"{_join(path, 'type')}: required but missing; expected one of {', '.join(TRANSFORMER_TYPES)}")
        return None
    if canonical is None:
        problems.append(
            f"{_join(path, 'type')}: unknown transformer type {_short(raw_type)}"
            f"{_did_you_mean(str(raw_type).removeprefix('transformer.'), TRANSFORMER_TYPES)}; "
            f"expected one of {', '.join(TRANSFORMER_TYPES)} (alias CAImageTransfomer)"
        )
        return None
    parsed = _transformer_config(canonical, raw.get("config"), _join(path, "config"), problems)
    if parsed is None:
        return None
    return TransformerSpec.model_construct(type=canonical, config=parsed)


def _transformer_config(canonical: str, config: Any, path: str, problems: list[str]) -> TransformerConfig | None:
    where = path or "config"
    if config is None:
        problems.append(f"{where}: required but missing; add the {canonical} config")
        return None
    if not isinstance(config, Mapping):
        problems.append(f"{where}: expected a mapping, got {_short(config)}")
        return None
    if canonical == "CompoundTransformer":
        parsed = _compound_config(config, path, problems)
    else:
        parsed = _validate(TRANSFORMER_CONFIG_MODELS[canonical], config, path, problems)
    if parsed is not None and parsed.model_extra:
        _warn_unknown(config, TRANSFORMER_CONFIG_MODELS[canonical].model_fields, where)
    return parsed  # type: ignore[return-value]


def _compound_config(config: Mapping[str, Any], path: str, problems: list[str]) -> CompoundTransformerConfig | None:
    raw_parts = config.get("transformers")
    parts_path = _join(path, "transformers")
    if not isinstance(raw_parts, Mapping) or not raw_parts:
        problems.append(
            f"{parts_path}: {'required but missing' if raw_parts is None else 'expected a non-empty mapping'}; "
            "add transformers: {NAME: {type: ..., config: ...}}"
        )
        return None
    parts: dict[str, TransformerSpec] = {}
    for name, raw in raw_parts.items():
        part = _transformer_spec(raw, _join(parts_path, str(name)), problems)
        if part is not None:
            parts[str(name)] = part
    if len(parts) != len(raw_parts):
        return None
    producer: dict[str, str] = {}
    for name, part in parts.items():
        for output, output_path in transformer_outputs(part, _join(parts_path, name)):
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
    variables_path = _join(path, "config", "variables")
    if isinstance(config, SimpleTransformerConfig):
        declared = frozenset(config.symbols)
        return [
            Requirement(symbol, _join(variables_path, out, "formula"), declared)
            for out, variable in config.variables.items()
            for symbol in formula_symbols(variable.formula)
        ]
    if isinstance(config, CAImageTransformerConfig):
        return [
            Requirement(getattr(channels, field), _join(variables_path, image, field), None)
            for image, channels in config.variables.items()
            for field in ("img_ch", "img_x_ch", "img_y_ch")
        ]
    if isinstance(config, PassThroughTransformerConfig):
        return [Requirement(source, _join(variables_path, out), None) for out, source in config.variables.items()]
    if isinstance(config, CompoundTransformerConfig):
        return [
            requirement
            for name, part in config.transformers.items()
            for requirement in transformer_inputs(part, _join(path, "config", "transformers", name))
        ]
    raise TypeError(f"unknown transformer config {type(config).__name__}")


def transformer_outputs(spec: TransformerSpec, path: str = "") -> list[tuple[str, str]]:
    """Every output name of ``spec`` with the YAML path that defines it."""
    config = spec.config
    if isinstance(config, CompoundTransformerConfig):
        return [
            output
            for name, part in config.transformers.items()
            for output in transformer_outputs(part, _join(path, "config", "transformers", name))
        ]
    return [(str(out), _join(path, "config", "variables", out)) for out in config.variables]  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ interfaces


def _yaml_type_quirk(entry: Any, path: str) -> Any:
    """``type:"scalar"`` (no space) is read by YAML as one string; take it as ``type: scalar``."""
    if isinstance(entry, str):
        match = _YAML_TYPE_QUIRK.fullmatch(entry)
        if match:
            logger.warning(
                '%s: read %r as type %s; write type: "%s" (a space after the colon) to silence this',
                path, entry, match.group(1), match.group(1),
            )
            return {"type": match.group(1)}
    return entry


def _interface(
    method: Any, config: Any, method_path: str, config_path: str, problems: list[str]
) -> InterfaceSpec | None:
    if method is None:
        problems.append(f"{method_path}: required but missing; expected one of {', '.join(INTERFACE_METHODS)}")
        return None
    if method not in INTERFACE_METHODS:
        problems.append(
            f"{method_path}: unknown method {_short(method)}{_did_you_mean(method, INTERFACE_METHODS)}; "
            f"expected one of {', '.join(INTERFACE_METHODS)}"
        )
        return None
    if not isinstance(config, Mapping):
        found = "required but missing" if config is None else f"expected a mapping, got {_short(config)}"
        problems.append(f"{config_path}: {found}; add config: {{variables: {{PV:NAME: {{proto: pva, name: PV:NAME}}}}}}")
        return None
    variables = config.get("variables")
    data: dict[str, Any] = {**config, "method": method}
    if isinstance(variables, Mapping):
        data["variables"] = {}
        for key, entry in variables.items():
            entry_path = _join(config_path, "variables", str(key))
            entry = _yaml_type_quirk(entry, entry_path)
            if entry is None:
                entry = {}
            if isinstance(entry, Mapping):
                _check_proto(method, entry.get("proto"), f"{entry_path}.proto", problems)
                entry = {"name": key, **entry}
            data["variables"][key] = entry

    def remap(loc: tuple) -> str:
        return method_path if loc and loc[0] == "method" else _join(config_path, *loc)

    found_before = len(problems)
    spec = _validate(InterfaceSpec, data, config_path, problems, remap=remap)
    return spec if len(problems) == found_before else None


def _check_proto(method: str, proto: Any, path: str, problems: list[str]) -> None:
    if method in ("p4p", "p4p_server") and proto == "ca":
        problems.append(
            f"{path}: {method} supports pva only, got 'ca'; use proto: pva, or get_method/put_method k2eg "
            "for Channel Access PVs"
        )


def _model_outputs(raw_variables: Any, path: str, problems: list[str]) -> dict[str, OutputSpec]:
    if raw_variables is None:
        return {}
    if not isinstance(raw_variables, Mapping):
        problems.append(f"{path}: expected a mapping of output name -> {{type: scalar|image|array|waveform}}")
        return {}
    outputs: dict[str, OutputSpec] = {}
    for key, entry in raw_variables.items():
        entry_path = _join(path, str(key))
        spec = _validate(OutputSpec, _yaml_type_quirk(entry, entry_path), entry_path, problems)
        if spec is not None:
            outputs[str(key)] = spec
    return outputs


# ------------------------------------------------------------------------------ cross-checks


@dataclass(frozen=True)
class _Paths:
    input_variables: str
    input_transform: str
    model_outputs: str
    output_transform: str
    output_variables: str


def _cross_check(
    inputs: InterfaceSpec | None,
    t_in: TransformerSpec | None,
    model_outputs: dict[str, OutputSpec],
    t_out: TransformerSpec | None,
    output: InterfaceSpec | None,
    paths: _Paths,
    problems: list[str],
) -> None:
    """Check the names that link the sections; parts that failed validation (None) are skipped."""
    if inputs is not None and output is not None:
        written = {variable.name for variable in output.variables.values()}
        for key, variable in inputs.variables.items():
            if variable.name in written:
                logger.warning(
                    "%s.%s: PV %s is both read and written by this pipeline; every put will trigger another "
                    "evaluation (set deployment.rate to bound the loop)", paths.input_variables, key, variable.name,
                )
    if inputs is not None and t_in is not None:
        for need in transformer_inputs(t_in, paths.input_transform):
            if need.name not in inputs.variables:
                problems.append(
                    f"{need.path}: {need.name!r} is not a PV in {paths.input_variables}; add it there "
                    "(or fix the name)"
                )
    if t_out is None:
        return
    outputs = model_outputs
    for need in transformer_inputs(t_out, paths.output_transform):
        if need.declared is not None:
            if need.name not in need.declared and need.name not in outputs:
                symbols_path = need.path.split(".config.variables.")[0] + ".config.symbols"
                problems.append(
                    f"{need.path}: symbol {need.name!r} is neither listed in {symbols_path} nor a model output "
                    f"in {paths.model_outputs}; add it to {symbols_path}"
                )
        elif outputs and need.name not in outputs:
            problems.append(
                f"{need.path}: {need.name!r} is not a model output in {paths.model_outputs}; add it there"
            )
    for name, output_path in transformer_outputs(t_out, paths.output_transform):
        if output is not None and name not in output.variables:
            problems.append(f"{output_path}: no PV named {name} in {paths.output_variables}; add it there")


# ------------------------------------------------------------------------------ legacy form


def _legacy(raw: Mapping[str, Any], problems: list[str]) -> PipelineConfig | None:
    _warn_unknown(raw, LEGACY_SECTIONS, "")
    deployment = _deployment(raw.get("deployment"), problems)

    def section(key: str, required: tuple[str, ...], example: str) -> Mapping[str, Any] | None:
        value = raw.get(key)
        if value is None:
            problems.append(f"{key}: required section is missing; add {key}: {example}")
            return None
        if not isinstance(value, Mapping):
            problems.append(f"{key}: expected a mapping, got {_short(value)}; write {key}: {example}")
            return None
        _warn_unknown(value, required, key)
        return value

    interface_example = "{%s: p4p|p4p_server|k2eg, config: {variables: {...}}}"
    transformer_example = "{type: SimpleTransformer, config: {symbols: [...], variables: {...}}}"
    input_raw = section("input_data", ("get_method", "config"), interface_example % "get_method")
    t_in_raw = section("input_data_to_model", ("type", "config"), transformer_example)
    t_out_raw = section("output_model_to_data", ("type", "config"), transformer_example)
    output_raw = section("output_data_to", ("put_method", "config"), interface_example % "put_method")

    inputs = outputs = t_in = t_out = None
    if input_raw is not None:
        inputs = _interface(input_raw.get("get_method"), input_raw.get("config"),
                            "input_data.get_method", "input_data.config", problems)
    if t_in_raw is not None:
        t_in = _transformer_spec(t_in_raw, "input_data_to_model", problems)
    model_outputs = _legacy_model_outputs(raw.get("outputs_model"), problems)
    if t_out_raw is not None:
        t_out = _transformer_spec(t_out_raw, "output_model_to_data", problems)
    if output_raw is not None:
        outputs = _interface(output_raw.get("put_method"), output_raw.get("config"),
                             "output_data_to.put_method", "output_data_to.config", problems)
    _cross_check(inputs, t_in, model_outputs, t_out, outputs,
                 _Paths("input_data.config.variables", "input_data_to_model", "outputs_model.config.variables",
                        "output_model_to_data", "output_data_to.config.variables"), problems)
    if None in (deployment, inputs, t_in, t_out, outputs):
        return None
    return PipelineConfig(
        deployment=deployment, input=inputs, input_transform=t_in, model_outputs=model_outputs,
        output_transform=t_out, output=outputs, source_format="legacy",
    )


def _legacy_model_outputs(raw: Any, problems: list[str]) -> dict[str, OutputSpec]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"outputs_model: expected a mapping, got {_short(raw)}; write outputs_model: "
                        "{config: {variables: {NAME: {type: scalar}}}}")
        return {}
    _warn_unknown(raw, ("config",), "outputs_model")
    config = raw.get("config") or {}
    if not isinstance(config, Mapping):
        problems.append(f"outputs_model.config: expected a mapping, got {_short(config)}")
        return {}
    return _model_outputs(config.get("variables"), "outputs_model.config.variables", problems)


def _deployment(raw: Any, problems: list[str]) -> DeploymentSettings | None:
    if raw is None:
        return DeploymentSettings()
    return _validate(DeploymentSettings, raw, "deployment", problems)


# ------------------------------------------------------------------------------ graph form


@dataclass
class _Module:
    key: str
    kind: str
    subtype: str
    type: str
    pub: set[str]
    sub: set[str]
    raw: Mapping[str, Any]

    @property
    def path(self) -> str:
        return f"modules.{self.key}"


def _topics(value: Any, path: str, problems: list[str]) -> set[str]:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
        return set()
    if isinstance(value, str):
        return {value}
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return set(value)
    problems.append(f"{path}: expected a topic name or a list of topic names, got {_short(value)}")
    return set()


def _module(key: str, raw: Any, problems: list[str]) -> _Module | None:
    path = f"modules.{key}"
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: expected a mapping with name, type, pub, sub and config, got {_short(raw)}")
        return None
    _warn_unknown(raw, MODULE_KEYS, path)
    module_type = raw.get("type")
    kind, _, subtype = module_type.partition(".") if isinstance(module_type, str) else ("", "", "")
    if kind not in MODULE_KINDS or not subtype:
        problems.append(
            f"{path}.type: expected 'interface.<{'|'.join(INTERFACE_METHODS)}>', 'transformer.<Type>' or "
            f"'model.<Name>', got {_short(module_type)}"
        )
        return None
    pub = _topics(raw.get("pub"), f"{path}.pub", problems)
    sub = _topics(raw.get("sub"), f"{path}.sub", problems)
    return _Module(str(key), kind, subtype, module_type, pub, sub, raw)


class _Graph:
    """Modules linked by topics: an edge a -> b when a publishes a topic b subscribes to."""

    def __init__(self, modules: list[_Module]):
        self.modules = modules
        self.successors = {m.key: [o for o in modules if o is not m and m.pub & o.sub] for m in modules}
        self.predecessors = {m.key: [o for o in modules if o is not m and o.pub & m.sub] for m in modules}

    def single(self, module: _Module, direction: str, kind: str, problems: list[str]) -> _Module | None:
        """The one module of ``kind`` linked to ``module`` (``direction`` is "sub" or "pub")."""
        linked = self.predecessors[module.key] if direction == "sub" else self.successors[module.key]
        topics = sorted(module.sub if direction == "sub" else module.pub)
        role = "publishes to" if direction == "sub" else "subscribes to"
        where = f"{module.path}.{direction}"
        if not linked:
            problems.append(
                f"{where}: no module {role} {topics or 'its topics'}; the runtime needs the chain {_CHAIN}, "
                f"so link a {kind} here"
            )
            return None
        if len(linked) > 1:
            problems.append(
                f"{where}: linked to {len(linked)} modules ({', '.join(m.key for m in linked)}); the runtime "
                f"supports a single chain {_CHAIN}"
            )
            return None
        other = linked[0]
        if other.kind != kind:
            problems.append(
                f"{where}: linked to {other.key!r} ({other.type}) but the chain {_CHAIN} needs a {kind} here; "
                + ("add a transformer (e.g. transformer.PassThroughTransformer) between them"
                   if kind == "transformer" else f"link a {kind} instead")
            )
            return None
        return other


def _graph(raw: Mapping[str, Any], problems: list[str]) -> PipelineConfig | None:
    _warn_unknown(raw, GRAPH_SECTIONS, "")
    deployment = _deployment(raw.get("deployment"), problems)
    raw_modules = raw.get("modules")
    if not isinstance(raw_modules, Mapping) or not raw_modules:
        problems.append(f"modules: expected a non-empty mapping of module name -> module, got {_short(raw_modules)}")
        return None
    modules = [m for m in (_module(str(k), v, problems) for k, v in raw_modules.items()) if m is not None]
    if len(modules) != len(raw_modules):
        return None

    chain = _find_chain(modules, problems)
    if chain is None:
        return None
    i_in, t_in_module, model, t_out_module, i_out = chain

    t_in = _transformer_spec({"type": t_in_module.type, "config": t_in_module.raw.get("config")},
                             t_in_module.path, problems)
    t_out = _transformer_spec({"type": t_out_module.type, "config": t_out_module.raw.get("config")},
                              t_out_module.path, problems)
    interface_in = _graph_interface(i_in, problems)
    interface_out = interface_in if i_out is i_in else _graph_interface(i_out, problems)
    model_config = model.raw.get("config") or {}
    if not isinstance(model_config, Mapping):
        problems.append(f"{model.path}.config: expected a mapping, got {_short(model_config)}")
        return None
    model_outputs = _model_outputs(model_config.get("variables"), f"{model.path}.config.variables", problems)
    shared = i_in is i_out
    if shared and None not in (interface_in, t_in, t_out):
        interface_in, interface_out = _split_shared(interface_in, t_in, t_out, i_in.path)
    _cross_check(interface_in, t_in, model_outputs, t_out, interface_out,
                 _Paths(f"{i_in.path}.config.variables", t_in_module.path, f"{model.path}.config.variables",
                        t_out_module.path, f"{i_out.path}.config.variables"), problems)
    if None in (deployment, t_in, t_out, interface_in, interface_out):
        return None
    return PipelineConfig(
        deployment=deployment, input=interface_in, input_transform=t_in, model_outputs=model_outputs,
        output_transform=t_out, output=interface_out,
        model_module=ModelSpec(type=model.type, config=dict(model_config)),
        module_names=ModuleNames(input=i_in.key, input_transform=t_in_module.key, model=model.key,
                                 output_transform=t_out_module.key, output=i_out.key),
        shared_interface=shared, source_format="modules",
    )


def _find_chain(modules: list[_Module], problems: list[str]) -> tuple[_Module, ...] | None:
    found_before = len(problems)
    models = [m for m in modules if m.kind == "model"]
    if len(models) != 1:
        found = f"found {len(models)} ({', '.join(m.key for m in models)})" if models else "found none"
        problems.append(f"modules: the runtime needs exactly one module of type model.<Name>; {found}")
        return None
    graph = _Graph(modules)
    model = models[0]
    t_in = graph.single(model, "sub", "transformer", problems)
    t_out = graph.single(model, "pub", "transformer", problems)
    i_in = graph.single(t_in, "sub", "interface", problems) if t_in else None
    i_out = graph.single(t_out, "pub", "interface", problems) if t_out else None
    if None in (t_in, t_out, i_in, i_out):
        return None
    assert t_in and t_out and i_in and i_out
    if t_in is t_out:
        problems.append(f"{t_in.path}: the same transformer feeds and reads the model; use one transformer "
                        "before the model and another after it")
        return None
    chain = (i_in, t_in, model, t_out, i_out)
    expected_links = {(i_in.key, t_in.key), (t_in.key, model.key), (model.key, t_out.key), (t_out.key, i_out.key)}
    for module in modules:
        if module not in chain:
            problems.append(
                f"{module.path}: not part of the chain {_CHAIN} (the runtime runs one chain); remove it "
                "or fix its pub/sub"
            )
            continue
        for successor in graph.successors[module.key]:
            if (module.key, successor.key) not in expected_links:
                problems.append(
                    f"{module.path}.pub: also feeds {successor.key!r}; the chain {_CHAIN} allows one "
                    "consumer per module"
                )
    return None if len(problems) > found_before else chain


def _graph_interface(module: _Module, problems: list[str]) -> InterfaceSpec | None:
    config = module.raw.get("config")
    if module.subtype not in INTERFACE_METHODS:
        problems.append(
            f"{module.path}.type: interface {module.type!r} is not supported by this runtime; expected one of "
            + ", ".join(f"interface.{method}" for method in INTERFACE_METHODS)
        )
        return None
    return _interface(module.subtype, config, f"{module.path}.type", f"{module.path}.config", problems)


def _split_shared(
    interface: InterfaceSpec, t_in: TransformerSpec, t_out: TransformerSpec, path: str
) -> tuple[InterfaceSpec, InterfaceSpec]:
    """One interface module doing both jobs: inputs are what t_in reads, outputs what t_out writes."""
    reads = {need.name for need in transformer_inputs(t_in)}
    writes = {name for name, _ in transformer_outputs(t_out)}
    inputs = {k: v for k, v in interface.variables.items() if k in reads}
    outputs = {k: v for k, v in interface.variables.items() if k in writes}
    for key in interface.variables:
        if key not in reads and key not in writes:
            logger.warning("%s.config.variables.%s: neither read by the input transformer nor written by the "
                           "output transformer; ignored", path, key)
    # Keep empty sides valid so the cross-check reports the real problem (a missing PV), not this.
    return (interface.model_copy(update={"variables": inputs or dict(interface.variables)}),
            interface.model_copy(update={"variables": outputs or dict(interface.variables)}))


# ------------------------------------------------------------------------------ entry points


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
        raise ConfigError([f"{origin}: expected a YAML mapping with the pipeline sections, got {_short(data)}"])
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
        config = _graph(raw, problems)
    elif legacy_keys:
        config = _legacy(raw, problems)
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
