"""Shared helpers for the operator tests: the CRD YAML and a small OpenAPI v3 value checker.

The checker covers the keywords crds/modeldeployment.yaml uses (type, enum, properties, required,
items, additionalProperties, minimum/maximum, minLength, pattern, date-time, int-or-string); CEL rules
(x-kubernetes-validations) need a real kube-apiserver and are exercised by the e2e suite.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "crds" / "modeldeployment.yaml"

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_PYTHON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def version_schema(crd: dict[str, Any] | None = None) -> dict[str, Any]:
    crd = crd or load_crd()
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def _type_ok(value: Any, type_name: str) -> bool:
    if type_name in ("integer", "number") and isinstance(value, bool):
        return False  # bool is an int in Python, not in JSON
    return isinstance(value, _PYTHON_TYPES[type_name])


def schema_problems(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Problems of `value` against an OpenAPI v3 (structural) schema; [] when it conforms."""
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _type_ok(value, "integer")):
            return [f"{path}: expected int or string, got {value!r}"]
        if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
            return [f"{path}: {value!r} does not match {schema['pattern']}"]
        return []
    problems: list[str] = []
    type_name = schema.get("type")
    if type_name and not _type_ok(value, type_name):
        return [f"{path}: expected {type_name}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if schema.get("format") == "date-time" and not _RFC3339.match(value):
            problems.append(f"{path}: {value!r} is not an RFC 3339 date-time")
    if _type_ok(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, dict):
        properties = schema.get("properties")
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{path}.{key}: required")
        for key, item in value.items():
            if properties is not None and key in properties:
                problems += schema_problems(item, properties[key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                problems += schema_problems(item, schema["additionalProperties"], f"{path}.{key}")
            elif properties is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                problems.append(f"{path}.{key}: unknown field (the API server would prune it)")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problems += schema_problems(item, schema["items"], f"{path}[{index}]")
    return problems
