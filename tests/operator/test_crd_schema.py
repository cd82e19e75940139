"""crds/modeldeployment.yaml vs model_deploy/operator/crd.py: names, structure, and field-for-field
agreement of the OpenAPI schema with the pydantic spec models (so the two cannot drift)."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import pytest
import yaml
from pydantic import BaseModel

from model_deploy.operator import crd
from model_deploy.operator.crd import ModelDeploymentSpec, SpecError, parse_spec
from model_deploy.operator.status import PHASES

from . import REPO_ROOT, load_crd, schema_problems, version_schema

EXAMPLES = sorted((REPO_ROOT / "examples").glob("modeldeployment*.yaml"))


@pytest.fixture(scope="module")
def crd_doc() -> dict[str, Any]:
    return load_crd()


@pytest.fixture(scope="module")
def root_schema(crd_doc) -> dict[str, Any]:
    return version_schema(crd_doc)


def test_names_match_the_python_constants(crd_doc):
    spec = crd_doc["spec"]
    assert crd_doc["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd_doc["metadata"]["name"] == f"{crd.PLURAL}.{crd.GROUP}"
    assert spec["group"] == crd.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == crd.KIND
    assert spec["names"]["plural"] == crd.PLURAL
    assert spec["names"]["singular"] == crd.SINGULAR
    assert spec["names"]["shortNames"] == crd.SHORT_NAMES
    (version,) = spec["versions"]
    assert version["name"] == crd.VERSION
    assert version["served"] and version["storage"]


def test_status_subresource_and_printer_columns(crd_doc):
    (version,) = crd_doc["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = {column["name"]: column for column in version["additionalPrinterColumns"]}
    assert columns["Model"]["jsonPath"] == ".spec.model.mlflow.name"
    assert columns["Version"]["jsonPath"] == ".status.resolvedVersion"
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _schema_nodes(schema: dict[str, Any], path: str = "$"):
    """Every schema node that describes a value (not the anyOf/allOf value-validation branches)."""
    yield path, schema
    for key, child in (schema.get("properties") or {}).items():
        yield from _schema_nodes(child, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _schema_nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _schema_nodes(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural(root_schema):
    """The structural-schema rules the API server enforces: every node has a type (or is explicitly
    int-or-string / preserve-unknown-fields), properties and additionalProperties are exclusive,
    and value-validation branches (anyOf) never declare types of their own unless int-or-string."""
    problems = []
    for path, node in _schema_nodes(root_schema):
        if "type" not in node and not (
            node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        ):
            problems.append(f"{path}: no type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
        if node.get("type") == "object" and not (
            "properties" in node or "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
        ) and path != "$.metadata":
            problems.append(f"{path}: object without properties would be pruned to {{}}")
        if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: anyOf outside int-or-string")
        for rule in node.get("x-kubernetes-validations", []):
            if not rule.get("message"):
                problems.append(f"{path}: CEL rule {rule['rule']!r} without a message naming the fix")
    assert problems == []


# ----------------------------------------------------------------------- pydantic <-> OpenAPI walk


_SCALAR_TYPES = {str: "string", int: "integer", bool: "boolean", float: "number"}


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        non_none = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(non_none) == 1:
            return non_none[0]
    return annotation


def _openapi_type(annotation: Any) -> str:
    annotation = _unwrap_optional(annotation)
    origin = get_origin(annotation) or annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    if origin is Literal:
        return "string"
    if origin in (dict, typing.Dict):
        return "object"
    if origin in (list, typing.List):
        return "array"
    return _SCALAR_TYPES[origin]


def _compare_model(model: type[BaseModel], schema: dict[str, Any], path: str) -> list[str]:
    problems: list[str] = []
    properties = schema.get("properties") or {}
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    for key in sorted(set(fields) - set(properties)):
        problems.append(f"{path}.{key}: in {model.__name__} but not in the CRD")
    for key in sorted(set(properties) - set(fields)):
        problems.append(f"{path}.{key}: in the CRD but not in {model.__name__}")

    required = {key for key, info in fields.items() if info.is_required()}
    if required != set(schema.get("required", [])):
        problems.append(f"{path}: required {sorted(required)} in pydantic, {schema.get('required', [])} in the CRD")

    for key in sorted(set(fields) & set(properties)):
        info, node, where = fields[key], properties[key], f"{path}.{key}"
        expected_type = _openapi_type(info.annotation)
        if node.get("type") != expected_type:
            problems.append(f"{where}: CRD type {node.get('type')}, pydantic {expected_type}")
        annotation = _unwrap_optional(info.annotation)
        if get_origin(annotation) is Literal and sorted(get_args(annotation)) != sorted(node.get("enum", [])):
            problems.append(f"{where}: enum {node.get('enum')} vs Literal{list(get_args(annotation))}")
        if get_origin(annotation) is list and get_args(annotation) and get_args(annotation)[0] in _SCALAR_TYPES:
            item_type = _SCALAR_TYPES[get_args(annotation)[0]]
            if (node.get("items") or {}).get("type") != item_type:
                problems.append(f"{where}[]: CRD items {node.get('items')}, pydantic {item_type}")
        for constraint in info.metadata:
            for attribute, openapi_key in (("ge", "minimum"), ("le", "maximum"), ("min_length", "minLength")):
                if hasattr(constraint, attribute) and isinstance(
                    constraint, (annotated_types.Ge, annotated_types.Le, annotated_types.MinLen)
                ):
                    if node.get(openapi_key) != getattr(constraint, attribute):
                        problems.append(f"{where}: {openapi_key} {node.get(openapi_key)} vs {constraint}")
        if "default" in node and node["default"] != info.default:
            problems.append(f"{where}: CRD default {node['default']!r}, pydantic {info.default!r}")
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            problems += _compare_model(annotation, node, where)
        elif get_origin(annotation) is dict and node.get("type") == "object":
            if "properties" not in node and not (
                node.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in node
            ):
                problems.append(f"{where}: free-form map must preserve unknown fields or set additionalProperties")
    return problems


def test_spec_schema_matches_pydantic_models_field_for_field(root_schema):
    assert _compare_model(ModelDeploymentSpec, root_schema["properties"]["spec"], "spec") == []


def test_drift_detector_notices_a_missing_field(root_schema):
    """The walk above is only worth something if it fails when the two disagree."""
    spec_schema = yaml.safe_load(yaml.safe_dump(root_schema["properties"]["spec"]))
    del spec_schema["properties"]["publish"]
    spec_schema["properties"]["replicas"]["maximum"] = 99
    spec_schema["properties"]["model"]["properties"]["mlflow"]["properties"]["extra"] = {"type": "string"}
    problems = _compare_model(ModelDeploymentSpec, spec_schema, "spec")
    assert any("spec.publish: in ModelDeploymentSpec but not in the CRD" in p for p in problems)
    assert any("spec.replicas: maximum 99" in p for p in problems)
    assert any("spec.model.mlflow.extra: in the CRD but not in MlflowModelSource" in p for p in problems)


def test_inline_config_keeps_unknown_fields(root_schema):
    inline = root_schema["properties"]["spec"]["properties"]["config"]["properties"]["inline"]
    assert inline == {**inline, "type": "object", "x-kubernetes-preserve-unknown-fields": True}


def test_cross_field_rules_are_cel_validations(root_schema):
    spec = root_schema["properties"]["spec"]
    model = spec["properties"]["model"]
    mlflow = model["properties"]["mlflow"]
    rules = {
        "spec": [rule["rule"] for rule in spec["x-kubernetes-validations"]],
        "model": [rule["rule"] for rule in model["x-kubernetes-validations"]],
        "mlflow": [rule["rule"] for rule in mlflow["x-kubernetes-validations"]],
        "config": [rule["rule"] for rule in spec["properties"]["config"]["x-kubernetes-validations"]],
    }
    assert "has(self.mlflow) != has(self.local)" in rules["model"]
    assert "!(has(self.version) && has(self.alias))" in rules["mlflow"]
    assert "!(has(self.inline) && has(self.configMapRef))" in rules["config"]
    assert any("has(self.config.inline)" in rule for rule in rules["spec"])
    assert mlflow["properties"]["version"]["pattern"] == "^[0-9]+$"


def test_status_schema_is_complete(root_schema):
    status = root_schema["properties"]["status"]["properties"]
    for key in (
        "observedGeneration", "phase", "message", "lastTransitionTime", "resolvedVersion", "modelUri",
        "deploymentName", "configChecksum", "replicas", "readyReplicas", "conditions",
    ):
        assert key in status, key
    assert set(status["phase"]["enum"]) == set(PHASES)
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"] == {"type": "string", "format": "date-time"}
    assert item["properties"]["observedGeneration"]["type"] == "integer"


# --------------------------------------------------- the OpenAPI part and pydantic agree on values

_VALID = {"model": {"mlflow": {"name": "m", "version": "3"}}}


def _with(path: str, value: Any) -> dict[str, Any]:
    spec = yaml.safe_load(yaml.safe_dump(_VALID))
    node = spec
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return spec


@pytest.mark.parametrize(
    "spec",
    [
        _with("replicas", 11),
        _with("replicas", -1),
        _with("metricsPort", 0),
        _with("metricsPort", 70000),
        _with("imagePullPolicy", "Sometimes"),
        _with("model.mlflow.version", "v3"),
        _with("model.mlflow.name", ""),
        _with("model.local", {"path": "models/relative"}),
        _with("config.configMapRef", {"key": "x.yaml"}),
        _with("extraArgs", [1]),
    ],
    ids=lambda spec: yaml.safe_dump(spec, default_flow_style=True).strip()[:60],
)
def test_openapi_and_pydantic_both_reject(root_schema, spec):
    assert schema_problems(spec, root_schema["properties"]["spec"], "spec") != []
    with pytest.raises(SpecError):
        parse_spec(spec)


@pytest.mark.parametrize(
    "spec",
    [
        _VALID,
        _with("replicas", 0),
        _with("model.mlflow", {"name": "m", "alias": "champion", "trackingUri": "http://mlflow:5000"}),
        _with("resources", {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": 1}}),
        _with("tolerations", [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]),
        _with("env", [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
        _with("envFrom", [{"secretRef": {"name": "creds"}, "prefix": "X_"}]),
        _with("config.inline", {"input_data": {"get_method": "p4p", "config": {"variables": {}}}}),
    ],
)
def test_openapi_and_pydantic_both_accept(root_schema, spec):
    assert schema_problems(spec, root_schema["properties"]["spec"], "spec") == []
    parse_spec(spec)


def test_resource_quantities_are_validated(root_schema):
    spec = _with("resources", {"limits": {"memory": "lots"}})
    assert schema_problems(spec, root_schema["properties"]["spec"], "spec") != []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_examples_are_valid(root_schema, path: Path):
    document = yaml.safe_load(path.read_text())
    assert document["apiVersion"] == crd.API_VERSION
    assert document["kind"] == crd.KIND
    assert len(document["metadata"]["name"]) <= 63
    assert schema_problems(document["spec"], root_schema["properties"]["spec"], "spec") == []
    parse_spec(document["spec"])


def test_there_are_examples():
    assert {path.name for path in EXAMPLES} >= {"modeldeployment.yaml", "modeldeployment-inline.yaml"}
