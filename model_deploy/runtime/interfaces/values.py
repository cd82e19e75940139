"""Interface config validation and value <-> wire conversion (pure functions, no I/O).

Interfaces receive the plain dict of ``input_data.config`` / ``output_data_to.config`` and
validate only what they need here, so they do not depend on the pipeline's config models.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from .base import config_error

VariableType = Literal["scalar", "image", "array", "waveform"]
VARIABLE_TYPES = ("scalar", "image", "array", "waveform")
ARRAY_TYPES = ("array", "waveform")

# dtype chars NTNDArray can carry (p4p.nt.NTNDArray._code2u); anything else is sent as float64.
_NDARRAY_DTYPE_CHARS = set("?bhilBHILfd")
_REAL_KINDS = "biuf"  # numpy dtype kinds: bool, signed, unsigned, float

_FIXES = {
    "type": "use one of: " + ", ".join(VARIABLE_TYPES),
    "proto": "use pva or ca",
    "image_size": "give image_size: {x: <columns>, y: <rows>} with positive integers",
    "name": "give the PV name as a string",
    "mode": "use one of: in, out, inout",
    "length": "give a positive integer",
}


class ImageSize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: PositiveInt
    y: PositiveInt


class VariableSpec(BaseModel):
    """One entry of ``variables``. Unknown keys are ignored (transformer-ish keys appear here)."""

    model_config = ConfigDict(extra="ignore")

    key: str
    name: str
    proto: Literal["pva", "ca"] = "pva"
    type: VariableType = "scalar"
    image_size: ImageSize | None = None
    default: Any = None
    # poly-lithic's per-PV direction for p4p_server: in (clients may write), out (read-only).
    mode: Literal["in", "out", "inout"] | None = None
    # poly-lithic's initial length of a hosted array without a default.
    length: PositiveInt | None = None

    @property
    def uri(self) -> str:
        return f"{self.proto}://{self.name}"


class InterfaceSettings(BaseModel):
    variables: dict[str, VariableSpec]
    timeout: float | None = Field(default=None, gt=0)


def _problem(path: str, message: str, fix: str | None) -> str:
    return f"{path}: {message}" + (f"; fix: {fix}" if fix else "")


def _variable_problems(prefix: str, key: str, error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        field = loc[0] if loc else ""
        path = f"{prefix}variables.{key}" + ("." + ".".join(loc) if loc else "")
        got = item.get("input")
        message = item["msg"]
        if item["type"] not in ("missing",) and not isinstance(got, (dict, list)):
            message += f" (got {got!r})"
        problems.append(_problem(path, message, _FIXES.get(field)))
    return problems


def parse_interface_config(
    config: Any,
    *,
    method: str,
    allowed_protos: tuple[str, ...] = ("pva", "ca"),
    field_prefix: str = "",
) -> InterfaceSettings:
    """Validate ``variables`` (and ``timeout``); raise ConfigError listing every problem."""
    if not isinstance(config, Mapping):
        raise config_error(
            [_problem(f"{field_prefix or 'config'}", f"expected a mapping, got {type(config).__name__}",
                      f"give the {method} config as a mapping with a 'variables' key")]
        )
    problems: list[str] = []
    raw_variables = config.get("variables")
    if not isinstance(raw_variables, Mapping) or not raw_variables:
        problems.append(
            _problem(
                f"{field_prefix}variables",
                "missing or empty" if not raw_variables else f"expected a mapping, got {type(raw_variables).__name__}",
                "list the PVs as variables: {KEY: {name: PV:NAME, proto: pva}}",
            )
        )
        raw_variables = {}

    variables: dict[str, VariableSpec] = {}
    for key, entry in raw_variables.items():
        key = str(key)
        if entry is None:
            entry = {}
        if not isinstance(entry, Mapping):
            problems.append(
                _problem(f"{field_prefix}variables.{key}", f"expected a mapping, got {entry!r}",
                         "give {name: <PV name>, proto: pva|ca}")
            )
            continue
        data = {"name": key, **entry, "key": key}
        try:
            spec = VariableSpec.model_validate(data)
        except ValidationError as exc:
            problems.extend(_variable_problems(field_prefix, key, exc))
            continue
        if spec.proto not in allowed_protos:
            problems.append(
                _problem(
                    f"{field_prefix}variables.{key}.proto",
                    f"{spec.proto!r} is not supported by {method}",
                    f"use {' or '.join(allowed_protos)}"
                    + (" (use get_method/put_method k2eg for Channel Access)" if spec.proto == "ca" else ""),
                )
            )
        variables[key] = spec

    timeout = config.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0
    ):
        problems.append(_problem(f"{field_prefix}timeout", f"expected a positive number of seconds, got {timeout!r}",
                                 "e.g. timeout: 2.0"))
        timeout = None
    if problems:
        raise config_error(problems)
    return InterfaceSettings(variables=variables, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Python values handed to/received from the pipeline
# ---------------------------------------------------------------------------------------------


def coerce_value(value: Any, spec: VariableSpec) -> float | np.ndarray:
    """Check/convert a pipeline value for ``spec.type``; raise ValueError naming the PV."""
    where = f"PV {spec.name!r} (variable {spec.key!r}, type {spec.type})"
    if spec.type == "scalar":
        array = np.asarray(value) if not isinstance(value, str) else np.asarray(None)
        if array.size != 1 or array.dtype.kind not in _REAL_KINDS:
            raise ValueError(f"{where}: expected one number, got {_describe(value)}")
        return float(array.reshape(()))
    array = np.asarray(value)
    if array.dtype.kind not in _REAL_KINDS:
        raise ValueError(f"{where}: expected real numbers, got {_describe(value)}")
    if spec.type in ARRAY_TYPES:
        if array.ndim > 1:
            raise ValueError(f"{where}: expected a 1-D array, got shape {array.shape}")
        return np.atleast_1d(array).astype(np.float64, copy=False)
    # image
    if array.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D image (rows, columns), got shape {array.shape}")
    if array.dtype.char not in _NDARRAY_DTYPE_CHARS:
        array = array.astype(np.float64)
    return np.ascontiguousarray(array)


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__}" + (f" of shape {shape}" if shape is not None else f" {value!r}"[:80])


def reshape_image(array: np.ndarray, spec: VariableSpec) -> np.ndarray:
    """A flat image (CA waveform, 1-D NTScalarArray) becomes (y, x) when image_size is known."""
    if array.ndim == 1 and spec.image_size is not None:
        rows, cols = spec.image_size.y, spec.image_size.x
        if array.size == rows * cols:
            return array.reshape(rows, cols)
    return array


def from_p4p(raw: Any, spec: VariableSpec) -> dict[str, Any]:
    """Turn a p4p-unwrapped value (ntfloat, ntnumericarray, ntndarray, ...) into a value dict.

    NTNDArray arrives already shaped (rows, columns) because p4p reverses ``dimension``
    (which lists x first); we copy into a plain ndarray so callers never hold p4p subclasses.
    """
    if isinstance(raw, np.ndarray):
        value: Any = np.array(raw)  # plain-ndarray copy
        if spec.type == "image":
            value = reshape_image(value, spec)
    elif isinstance(raw, numbers.Number):
        value = float(raw)
    else:
        value = raw
    result: dict[str, Any] = {"value": value}
    timestamp = getattr(raw, "timestamp", None)
    if timestamp:  # 0.0 means the server never stamped it
        result["timestamp"] = float(timestamp)
    severity = getattr(raw, "severity", None)
    if severity is not None:
        result["severity"] = int(severity)
    return result


def initial_value(spec: VariableSpec) -> float | np.ndarray:
    """Initial value of a PV hosted by ``p4p_server`` (default, else zeros)."""
    if spec.type == "scalar":
        if spec.default is None:
            return 0.0
        return coerce_value(spec.default, spec)
    if spec.type in ARRAY_TYPES:
        if spec.default is not None:
            return coerce_value(spec.default, spec)
        return np.zeros(spec.length or 10, dtype=np.float64)
    if spec.image_size is None:
        raise ValueError("image_size is required")
    if spec.default is not None:
        default = np.asarray(spec.default, dtype=np.float64)
        if default.ndim == 0:
            return np.full((spec.image_size.y, spec.image_size.x), float(default))
        return coerce_value(default, spec)
    return np.zeros((spec.image_size.y, spec.image_size.x), dtype=np.float64)


def from_k2eg(payload: Any, spec: VariableSpec) -> dict[str, Any]:
    """Turn a k2eg (msgpack) PV map ``{value, alarm{severity}, timeStamp{...}}`` into a value dict."""
    if not isinstance(payload, Mapping):
        payload = {"value": payload}
    raw = payload.get("value")
    value: Any
    if isinstance(raw, (list, tuple, np.ndarray)):
        value = np.asarray(raw, dtype=np.float64)
        if spec.type == "image":
            dims = payload.get("dimension")
            if isinstance(dims, list) and dims and all(isinstance(d, Mapping) and "size" in d for d in dims):
                shape = [int(d["size"]) for d in reversed(dims)]  # NTNDArray lists x first
                if math.prod(shape) == value.size:
                    value = value.reshape(shape)
            else:
                value = reshape_image(value, spec)
    elif isinstance(raw, bool) or isinstance(raw, numbers.Number):
        value = float(raw)
    else:
        value = raw
    result: dict[str, Any] = {"value": value}
    stamp = payload.get("timeStamp")
    if isinstance(stamp, Mapping) and stamp.get("secondsPastEpoch"):
        result["timestamp"] = float(stamp["secondsPastEpoch"]) + float(stamp.get("nanoseconds", 0)) * 1e-9
    alarm = payload.get("alarm")
    if isinstance(alarm, Mapping) and "severity" in alarm:
        result["severity"] = int(alarm["severity"])
    return result
