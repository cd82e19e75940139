"""The pydantic models of a pipeline config, and the names they accept.

Both YAML forms (the legacy model_manager sections and poly-lithic's ``modules:`` graph) are
validated into these models and end as one ``PipelineConfig``. Only shape and per-field checks
live here; the problems that span sections are found by ``sections.cross_check``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from model_deploy.runtime.formula import compile_formula

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

VariableType = Literal["scalar", "image", "array", "waveform"]


def canonical_transformer_type(name: Any) -> str | None:
    """The canonical transformer type for ``name`` (``transformer.`` prefix and typo aliases allowed)."""
    if not isinstance(name, str):
        return None
    bare = name.removeprefix("transformer.")
    bare = TRANSFORMER_ALIASES.get(bare, bare)
    return bare if bare in TRANSFORMER_TYPES else None


# ------------------------------------------------------------------------------ formulas


@functools.lru_cache(maxsize=4096)
def formula_symbols(text: str) -> tuple[str, ...]:
    """Symbols of a formula, in order; raises FormulaError if it does not compile."""
    return compile_formula(text).symbols


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

