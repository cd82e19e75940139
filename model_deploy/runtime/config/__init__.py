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

Layout (this package's __init__ is the public facade; import from model_deploy.runtime.config):

* ``models``: the pydantic models and the names they accept (methods, types, aliases).
* ``problems``: pydantic errors -> ``field.path: problem; fix`` lines, unknown-key warnings.
* ``transformers``: transformer ``{type, config}`` validation and the names each reads/writes.
* ``sections``: interfaces, model outputs, deployment, and the cross-section name checks.
* ``legacy`` / ``graph``: the two YAML forms, each normalised into a PipelineConfig.
* ``loading``: ``load_config``, ``read_config_source``, ``config_checksum`` (YAML reading).
"""

from model_deploy.runtime.config.graph import GRAPH_SECTIONS, MODULE_KEYS, MODULE_KINDS
from model_deploy.runtime.config.legacy import LEGACY_SECTIONS
from model_deploy.runtime.config.loading import config_checksum, load_config, read_config_source
from model_deploy.runtime.config.models import (
    INTERFACE_METHODS,
    TRANSFORMER_ALIASES,
    TRANSFORMER_CONFIG_MODELS,
    TRANSFORMER_TYPES,
    VARIABLE_TYPES,
    CAImageChannels,
    CAImageTransformerConfig,
    CompoundTransformerConfig,
    DeploymentSettings,
    FormulaVariable,
    ImageSize,
    InterfaceSpec,
    ModelSpec,
    ModuleConfig,
    ModuleNames,
    OutputSpec,
    PassThroughTransformerConfig,
    PipelineConfig,
    SimpleTransformerConfig,
    TransformerConfig,
    TransformerSpec,
    VariableSpec,
    VariableType,
    canonical_transformer_type,
    formula_symbols,
)
from model_deploy.runtime.config.problems import validation_problems
from model_deploy.runtime.config.transformers import (
    Requirement,
    parse_transformer_config,
    parse_transformer_spec,
    transformer_inputs,
    transformer_outputs,
)
from model_deploy.runtime.errors import ConfigError

__all__ = [
    "GRAPH_SECTIONS",
    "INTERFACE_METHODS",
    "LEGACY_SECTIONS",
    "MODULE_KEYS",
    "MODULE_KINDS",
    "TRANSFORMER_ALIASES",
    "TRANSFORMER_CONFIG_MODELS",
    "TRANSFORMER_TYPES",
    "VARIABLE_TYPES",
    "CAImageChannels",
    "CAImageTransformerConfig",
    "CompoundTransformerConfig",
    "ConfigError",
    "DeploymentSettings",
    "FormulaVariable",
    "ImageSize",
    "InterfaceSpec",
    "ModelSpec",
    "ModuleConfig",
    "ModuleNames",
    "OutputSpec",
    "PassThroughTransformerConfig",
    "PipelineConfig",
    "Requirement",
    "SimpleTransformerConfig",
    "TransformerConfig",
    "TransformerSpec",
    "VariableSpec",
    "VariableType",
    "canonical_transformer_type",
    "config_checksum",
    "formula_symbols",
    "load_config",
    "parse_transformer_config",
    "parse_transformer_spec",
    "read_config_source",
    "transformer_inputs",
    "transformer_outputs",
    "validation_problems",
]
