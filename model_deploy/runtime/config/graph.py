"""poly-lithic's ``modules:`` graph form, normalised into the same PipelineConfig as the legacy form.

Modules are linked by topics (a publishes what b subscribes to). The runtime runs one linear
chain, interface -> transformer -> model -> transformer -> interface, so the graph must be
exactly that; anything else is reported at the module's ``pub``/``sub``/``type``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from model_deploy.runtime.config.models import (
    INTERFACE_METHODS,
    InterfaceSpec,
    ModelSpec,
    ModuleNames,
    PipelineConfig,
    TransformerSpec,
)
from model_deploy.runtime.config.problems import logger, short_repr, warn_unknown_keys
from model_deploy.runtime.config.sections import (
    SectionPaths,
    cross_check,
    validate_deployment,
    validate_interface,
    validate_model_outputs,
)
from model_deploy.runtime.config.transformers import (
    transformer_inputs,
    transformer_outputs,
    validate_transformer_spec,
)

GRAPH_SECTIONS: tuple[str, ...] = ("deployment", "modules")
MODULE_KEYS: tuple[str, ...] = ("name", "type", "pub", "sub", "module_args", "config")
MODULE_KINDS: tuple[str, ...] = ("interface", "transformer", "model")

# The only graph shape the runtime runs; named in problems about the graph.
_CHAIN = "interface -> transformer -> model -> transformer -> interface"


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
    problems.append(f"{path}: expected a topic name or a list of topic names, got {short_repr(value)}")
    return set()


def _module(key: str, raw: Any, problems: list[str]) -> _Module | None:
    path = f"modules.{key}"
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: expected a mapping with name, type, pub, sub and config, got {short_repr(raw)}")
        return None
    warn_unknown_keys(raw, MODULE_KEYS, path)
    module_type = raw.get("type")
    kind, _, subtype = module_type.partition(".") if isinstance(module_type, str) else ("", "", "")
    if kind not in MODULE_KINDS or not subtype:
        problems.append(
            f"{path}.type: expected 'interface.<{'|'.join(INTERFACE_METHODS)}>', 'transformer.<Type>' or "
            f"'model.<Name>', got {short_repr(module_type)}"
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


def graph_pipeline(raw: Mapping[str, Any], problems: list[str]) -> PipelineConfig | None:
    """The pipeline of a ``modules:`` config, or None after appending every problem found."""
    warn_unknown_keys(raw, GRAPH_SECTIONS, "")
    deployment = validate_deployment(raw.get("deployment"), problems)
    raw_modules = raw.get("modules")
    if not isinstance(raw_modules, Mapping) or not raw_modules:
        problems.append(
            f"modules: expected a non-empty mapping of module name -> module, got {short_repr(raw_modules)}"
        )
        return None
    modules = [m for m in (_module(str(k), v, problems) for k, v in raw_modules.items()) if m is not None]
    if len(modules) != len(raw_modules):
        return None

    chain = _find_chain(modules, problems)
    if chain is None:
        return None
    i_in, t_in_module, model, t_out_module, i_out = chain

    t_in = validate_transformer_spec({"type": t_in_module.type, "config": t_in_module.raw.get("config")},
                             t_in_module.path, problems)
    t_out = validate_transformer_spec({"type": t_out_module.type, "config": t_out_module.raw.get("config")},
                              t_out_module.path, problems)
    interface_in = _graph_interface(i_in, problems)
    interface_out = interface_in if i_out is i_in else _graph_interface(i_out, problems)
    model_config = model.raw.get("config") or {}
    if not isinstance(model_config, Mapping):
        problems.append(f"{model.path}.config: expected a mapping, got {short_repr(model_config)}")
        return None
    model_outputs = validate_model_outputs(model_config.get("variables"), f"{model.path}.config.variables", problems)
    shared = i_in is i_out
    if shared and None not in (interface_in, t_in, t_out):
        interface_in, interface_out = _split_shared(interface_in, t_in, t_out, i_in.path)
    cross_check(interface_in, t_in, model_outputs, t_out, interface_out,
                 SectionPaths(f"{i_in.path}.config.variables", t_in_module.path, f"{model.path}.config.variables",
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
    return validate_interface(module.subtype, config, f"{module.path}.type", f"{module.path}.config", problems)


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

