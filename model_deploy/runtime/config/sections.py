"""Sections both YAML forms share: interfaces, declared model outputs, deployment, and the cross-checks.

``cross_check`` follows the names that link the chain (interface PVs -> transformer inputs,
model outputs -> output transformer -> output PVs) and reports a broken link at the YAML path
that names it; ``SectionPaths`` says where each section sits in the form being read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from model_deploy.runtime.config.models import (
    INTERFACE_METHODS,
    DeploymentSettings,
    InterfaceSpec,
    OutputSpec,
    TransformerSpec,
)
from model_deploy.runtime.config.problems import did_you_mean, join_path, logger, short_repr, validate_pydantic
from model_deploy.runtime.config.transformers import transformer_inputs, transformer_outputs

# A YAML line like ``type:"scalar"`` (no space after the colon), which YAML reads as one string.
_YAML_TYPE_QUIRK = re.compile(r"\s*type\s*:\s*[\"']?([A-Za-z_]+)[\"']?\s*")


# ------------------------------------------------------------------------------ interfaces and model outputs


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


def validate_interface(
    method: Any, config: Any, method_path: str, config_path: str, problems: list[str]
) -> InterfaceSpec | None:
    """The interface of ``method`` with ``config``, or None after appending its problems."""
    if method is None:
        problems.append(f"{method_path}: required but missing; expected one of {', '.join(INTERFACE_METHODS)}")
        return None
    if method not in INTERFACE_METHODS:
        problems.append(
            f"{method_path}: unknown method {short_repr(method)}{did_you_mean(method, INTERFACE_METHODS)}; "
            f"expected one of {', '.join(INTERFACE_METHODS)}"
        )
        return None
    if not isinstance(config, Mapping):
        found = "required but missing" if config is None else f"expected a mapping, got {short_repr(config)}"
        problems.append(
            f"{config_path}: {found}; add config: {{variables: {{PV:NAME: {{proto: pva, name: PV:NAME}}}}}}"
        )
        return None
    variables = config.get("variables")
    data: dict[str, Any] = {**config, "method": method}
    if isinstance(variables, Mapping):
        data["variables"] = {}
        for key, entry in variables.items():
            entry_path = join_path(config_path, "variables", str(key))
            entry = _yaml_type_quirk(entry, entry_path)
            if entry is None:
                entry = {}
            if isinstance(entry, Mapping):
                _check_proto(method, entry.get("proto"), f"{entry_path}.proto", problems)
                entry = {"name": key, **entry}
            data["variables"][key] = entry

    def remap(loc: tuple) -> str:
        return method_path if loc and loc[0] == "method" else join_path(config_path, *loc)

    found_before = len(problems)
    spec = validate_pydantic(InterfaceSpec, data, config_path, problems, remap=remap)
    return spec if len(problems) == found_before else None


def _check_proto(method: str, proto: Any, path: str, problems: list[str]) -> None:
    if method in ("p4p", "p4p_server") and proto == "ca":
        problems.append(
            f"{path}: {method} supports pva only, got 'ca'; use proto: pva, or get_method/put_method k2eg "
            "for Channel Access PVs"
        )


def validate_model_outputs(raw_variables: Any, path: str, problems: list[str]) -> dict[str, OutputSpec]:
    """The declared model outputs that are valid; the problems of the others are appended."""
    if raw_variables is None:
        return {}
    if not isinstance(raw_variables, Mapping):
        problems.append(f"{path}: expected a mapping of output name -> {{type: scalar|image|array|waveform}}")
        return {}
    outputs: dict[str, OutputSpec] = {}
    for key, entry in raw_variables.items():
        entry_path = join_path(path, str(key))
        spec = validate_pydantic(OutputSpec, _yaml_type_quirk(entry, entry_path), entry_path, problems)
        if spec is not None:
            outputs[str(key)] = spec
    return outputs


def validate_deployment(raw: Any, problems: list[str]) -> DeploymentSettings | None:
    """The ``deployment`` section (defaults when absent), or None after appending its problems."""
    if raw is None:
        return DeploymentSettings()
    return validate_pydantic(DeploymentSettings, raw, "deployment", problems)


# ------------------------------------------------------------------------------ cross-checks


@dataclass(frozen=True)
class SectionPaths:
    """Where each linked section sits in the YAML form being read (problem lines name these)."""

    input_variables: str
    input_transform: str
    model_outputs: str
    output_transform: str
    output_variables: str


def cross_check(
    inputs: InterfaceSpec | None,
    t_in: TransformerSpec | None,
    model_outputs: dict[str, OutputSpec],
    t_out: TransformerSpec | None,
    output: InterfaceSpec | None,
    paths: SectionPaths,
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
