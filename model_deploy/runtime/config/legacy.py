"""The legacy model_manager form: ``deployment``, ``input_data`` ... ``output_data_to``, read into a PipelineConfig."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from model_deploy.runtime.config.models import OutputSpec, PipelineConfig
from model_deploy.runtime.config.problems import short_repr, warn_unknown_keys
from model_deploy.runtime.config.sections import (
    SectionPaths,
    cross_check,
    validate_deployment,
    validate_interface,
    validate_model_outputs,
)
from model_deploy.runtime.config.transformers import validate_transformer_spec

LEGACY_SECTIONS: tuple[str, ...] = (
    "deployment",
    "input_data",
    "input_data_to_model",
    "outputs_model",
    "output_model_to_data",
    "output_data_to",
)


def legacy_pipeline(raw: Mapping[str, Any], problems: list[str]) -> PipelineConfig | None:
    """The pipeline of a legacy config, or None after appending every problem found."""
    warn_unknown_keys(raw, LEGACY_SECTIONS, "")
    deployment = validate_deployment(raw.get("deployment"), problems)

    def section(key: str, required: tuple[str, ...], example: str) -> Mapping[str, Any] | None:
        value = raw.get(key)
        if value is None:
            problems.append(f"{key}: required section is missing; add {key}: {example}")
            return None
        if not isinstance(value, Mapping):
            problems.append(f"{key}: expected a mapping, got {short_repr(value)}; write {key}: {example}")
            return None
        warn_unknown_keys(value, required, key)
        return value

    interface_example = "{%s: p4p|p4p_server|k2eg, config: {variables: {...}}}"
    transformer_example = "{type: SimpleTransformer, config: {symbols: [...], variables: {...}}}"
    input_raw = section("input_data", ("get_method", "config"), interface_example % "get_method")
    t_in_raw = section("input_data_to_model", ("type", "config"), transformer_example)
    t_out_raw = section("output_model_to_data", ("type", "config"), transformer_example)
    output_raw = section("output_data_to", ("put_method", "config"), interface_example % "put_method")

    inputs = outputs = t_in = t_out = None
    if input_raw is not None:
        inputs = validate_interface(input_raw.get("get_method"), input_raw.get("config"),
                            "input_data.get_method", "input_data.config", problems)
    if t_in_raw is not None:
        t_in = validate_transformer_spec(t_in_raw, "input_data_to_model", problems)
    model_outputs = _legacy_model_outputs(raw.get("outputs_model"), problems)
    if t_out_raw is not None:
        t_out = validate_transformer_spec(t_out_raw, "output_model_to_data", problems)
    if output_raw is not None:
        outputs = validate_interface(output_raw.get("put_method"), output_raw.get("config"),
                             "output_data_to.put_method", "output_data_to.config", problems)
    cross_check(inputs, t_in, model_outputs, t_out, outputs,
                 SectionPaths("input_data.config.variables", "input_data_to_model", "outputs_model.config.variables",
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
        problems.append(f"outputs_model: expected a mapping, got {short_repr(raw)}; write outputs_model: "
                        "{config: {variables: {NAME: {type: scalar}}}}")
        return {}
    warn_unknown_keys(raw, ("config",), "outputs_model")
    config = raw.get("config") or {}
    if not isinstance(config, Mapping):
        problems.append(f"outputs_model.config: expected a mapping, got {short_repr(config)}")
        return {}
    return validate_model_outputs(config.get("variables"), "outputs_model.config.variables", problems)

