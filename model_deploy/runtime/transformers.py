"""Transformers: turn control-system values into model inputs, and model outputs into PV values.

Every transformer keeps the latest value of each input it needs. ``handle(name, value)`` (or
``handle_many(updates)`` for a coalesced burst: many updates, one computation) stores values; once
every needed input has a value the outputs are computed, ``updated`` turns True and
``latest_transformed`` holds ``{output: value}``. ``take()`` returns that dict and clears ``updated``.
Values may be ``{"value": ...}`` dicts (what interfaces deliver) or bare values; ``None`` means
"no value" (e.g. disconnected) and blocks computation again until a value arrives.

Transformers are not thread-safe: the pipeline drives them from its single worker thread.

Behaviour choices (compared with poly-lithic's implementation):

* SimpleTransformer waits for the symbols its formulas USE. Declared ``symbols`` no formula uses
  are not waited for (the seed's ReverseTransformer example declares its output PV there).
* Formulas are evaluated with numpy semantics under ``np.errstate(all="ignore")``: NaN/inf inputs
  give NaN/inf outputs instead of exceptions; ``non_finite()`` lists them for the pipeline.
* CAImageTransformer returns images shaped ``(rows, cols) == (y, x)``. EPICS areaDetector (and CA
  camera IOCs) flatten row-major with x varying fastest, so ``reshape(y, x)`` puts pixel (x, y) at
  ``image[y, x]``; poly-lithic's current code does the same. ``reshape(x, y)`` (the README's "(x, y)")
  is wrong for non-square images: it shears them. With ``unfold: column_major`` the flat array is read
  in Fortran order and the result is still ``(y, x)`` (poly-lithic transposes that case to ``(x, y)``;
  one orientation for all images is less surprising for the model).
* A size mismatch (elements != x * y) raises ValueError naming the channels; nothing is emitted.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from model_deploy.runtime.config import (
    CAImageTransformerConfig,
    CompoundTransformerConfig,
    PassThroughTransformerConfig,
    SimpleTransformerConfig,
    TransformerSpec,
    parse_transformer_config,
    parse_transformer_spec,
)
from model_deploy.runtime.errors import ConfigError
from model_deploy.runtime.formula import CompiledFormula, compile_formula

# ------------------------------------------------------------------------------ value helpers


def unwrap(name: str, value: Any) -> Any:
    """The payload of an update: ``value["value"]`` for dicts, else the value itself."""
    if isinstance(value, Mapping):
        if "value" not in value:
            raise ValueError(f"{name}: update has no 'value' field (keys: {', '.join(map(str, value))})")
        return value["value"]
    return value


def as_numeric(name: str, value: Any) -> np.float64 | np.ndarray | None:
    """A float64 scalar or array for formula evaluation; None stays None (no value)."""
    if value is None:
        return None
    if isinstance(value, (complex, np.complexfloating)):
        raise ValueError(f"{name}: complex values are not supported, got {_describe(value)}")
    if isinstance(value, (float, int, np.number, np.bool_)):
        return np.float64(value)
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            return np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a numeric array, got {_describe(value)}") from None
    raise ValueError(f"{name}: expected a number or a numeric array, got {_describe(value)}")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _plain(value: Any) -> Any:
    """numpy scalars / 0-d arrays as python floats (what interfaces and JSON expect)."""
    if isinstance(value, np.ndarray):
        return float(value) if value.ndim == 0 else value
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return float(value)
    return value


def non_finite(outputs: Mapping[str, Any]) -> list[str]:
    """Keys whose value is (or contains) NaN or inf. Non-numeric values are ignored."""
    bad = []
    for key, value in outputs.items():
        if isinstance(value, float):
            if not math.isfinite(value):
                bad.append(key)
            continue
        try:
            if not np.all(np.isfinite(value)):
                bad.append(key)
        except TypeError:
            continue
    return bad


# ------------------------------------------------------------------------------ base class


class Transformer(ABC):
    """Common state machine: store inputs, compute when every needed input has a value."""

    type_name: ClassVar[str]

    def __init__(self, input_names: list[str], output_names: list[str]):
        self.input_names: list[str] = input_names
        self.output_names: list[str] = output_names
        self.updated: bool = False
        self.latest_transformed: dict[str, Any] = {}
        self._needed = frozenset(input_names)
        self._values: dict[str, Any] = {}
        self._missing: set[str] = set(input_names)

    def handle(self, name: str, value: Any) -> None:
        """Store one update; compute if it was needed and every needed input now has a value."""
        self.handle_many({name: value})

    def handler(self, name: str, value: Any) -> None:
        """poly-lithic's name for ``handle``."""
        self.handle(name, value)

    def handle_many(self, updates: Mapping[str, Any]) -> None:
        """Store a batch of updates, then compute at most once."""
        relevant = not self._needed  # a transformer without inputs (constants) computes on any update
        errors = []
        for name, value in updates.items():
            if name not in self._needed:
                continue
            relevant = True
            try:
                self._store(name, self._convert(name, unwrap(name, value)))
            except ValueError as exc:
                errors.append(str(exc))
        if errors:
            raise ValueError(f"{self.type_name}: " + "; ".join(errors))
        if relevant and not self._missing:
            self.latest_transformed = self._transform()
            self.updated = True

    def take(self) -> dict[str, Any] | None:
        """The latest outputs if they changed since the last take(), else None."""
        if not self.updated:
            return None
        self.updated = False
        return dict(self.latest_transformed)

    def reset_updated(self) -> None:
        self.updated = False

    def _store(self, name: str, value: Any) -> None:
        if value is None:
            self._values.pop(name, None)
            self._missing.add(name)
        else:
            self._values[name] = value
            self._missing.discard(name)

    def _convert(self, name: str, value: Any) -> Any:
        return value

    @abstractmethod
    def _transform(self) -> dict[str, Any]:
        """Compute every output from ``self._values`` (all needed inputs are present)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(inputs={self.input_names}, outputs={self.output_names})"


def _validated(config: Any, model: type, type_name: str) -> Any:
    return config if isinstance(config, model) else parse_transformer_config(type_name, config)


# ------------------------------------------------------------------------------ implementations


class SimpleTransformer(Transformer):
    """``variables: {out: {formula}}`` over input symbols; see the module docstring."""

    type_name = "SimpleTransformer"

    def __init__(self, config: Mapping[str, Any] | SimpleTransformerConfig):
        config = _validated(config, SimpleTransformerConfig, self.type_name)
        self.formulas: dict[str, CompiledFormula] = {
            out: compile_formula(variable.formula) for out, variable in config.variables.items()
        }
        self.declared_symbols: list[str] = list(config.symbols)
        needed: dict[str, None] = {}
        for formula in self.formulas.values():
            needed.update(dict.fromkeys(formula.symbols))
        super().__init__(list(needed), list(self.formulas))

    def _convert(self, name: str, value: Any) -> Any:
        return as_numeric(name, value)

    def _transform(self) -> dict[str, Any]:
        values = self._values
        with np.errstate(all="ignore"):
            return {out: _plain(formula(values)) for out, formula in self.formulas.items()}


class ReverseTransformer(SimpleTransformer):
    """A SimpleTransformer from model outputs to PV names (kept as its own type for the seed configs)."""

    type_name = "ReverseTransformer"


class CAImageTransformer(Transformer):
    """``variables: {out: {img_ch, img_x_ch, img_y_ch}}``: flat CA arrays -> 2-D ``(y, x)`` images."""

    type_name = "CAImageTransformer"

    def __init__(self, config: Mapping[str, Any] | CAImageTransformerConfig):
        config = _validated(config, CAImageTransformerConfig, self.type_name)
        self.images = dict(config.variables)
        channels: dict[str, None] = {}
        for image in self.images.values():
            channels.update(dict.fromkeys((image.img_ch, image.img_x_ch, image.img_y_ch)))
        super().__init__(list(channels), list(self.images))

    def _transform(self) -> dict[str, Any]:
        return {out: self._image(out) for out in self.images}

    def _image(self, out: str) -> np.ndarray:
        channels = self.images[out]
        columns = self._dimension(out, channels.img_x_ch)
        rows = self._dimension(out, channels.img_y_ch)
        data = np.asarray(self._values[channels.img_ch])
        if data.size != columns * rows:
            raise ValueError(
                f"CAImageTransformer {out!r}: {channels.img_ch} has {data.size} elements but "
                f"{channels.img_x_ch} x {channels.img_y_ch} = {columns} x {rows} = {columns * rows}; "
                "check that img_x_ch is the column count and img_y_ch the row count"
            )
        order = "F" if channels.unfold == "column_major" else "C"
        return data.reshape(-1, order=order).reshape((rows, columns), order=order)

    def _dimension(self, out: str, channel: str) -> int:
        raw = np.asarray(self._values[channel]).reshape(-1)
        number = float(raw[0]) if raw.size == 1 and np.issubdtype(raw.dtype, np.number) else math.nan
        if not (math.isfinite(number) and number >= 1 and number == int(number)):
            raise ValueError(
                f"CAImageTransformer {out!r}: {channel} = {_describe(self._values[channel])} is not a "
                "positive whole number of pixels"
            )
        return int(number)


class PassThroughTransformer(Transformer):
    """``variables: {OUT: "input_name"}``: outputs the input value unchanged (images too)."""

    type_name = "PassThroughTransformer"

    def __init__(self, config: Mapping[str, Any] | PassThroughTransformerConfig):
        config = _validated(config, PassThroughTransformerConfig, self.type_name)
        self.mapping: dict[str, str] = dict(config.variables)
        super().__init__(list(dict.fromkeys(self.mapping.values())), list(self.mapping))

    def _transform(self) -> dict[str, Any]:
        return {out: self._values[source] for out, source in self.mapping.items()}


class CompoundTransformer(Transformer):
    """Several transformers in parallel; each update goes to the parts that need it.

    ``latest_transformed`` merges the latest outputs of every part that has produced at least once,
    so it may be partial until all parts have data (the pipeline waits for the inputs it needs).
    """

    type_name = "CompoundTransformer"

    def __init__(self, config: Mapping[str, Any] | CompoundTransformerConfig):
        config = _validated(config, CompoundTransformerConfig, self.type_name)
        self.parts: dict[str, Transformer] = {
            name: build_transformer(spec) for name, spec in config.transformers.items()
        }
        inputs: dict[str, None] = {}
        outputs: list[str] = []
        for part in self.parts.values():
            inputs.update(dict.fromkeys(part.input_names))
            outputs.extend(part.output_names)
        super().__init__(list(inputs), outputs)
        self._merged: dict[str, Any] = {}

    def handle_many(self, updates: Mapping[str, Any]) -> None:
        errors = []
        for name, part in self.parts.items():
            wanted = updates if not part.input_names else {k: v for k, v in updates.items() if k in part._needed}
            if not wanted:
                continue
            try:
                part.handle_many(wanted)
            except ValueError as exc:
                errors.append(f"{name}: {exc}")
            fresh = part.take()
            if fresh is not None:
                self._merged.update(fresh)
                self.updated = True
        if self.updated:
            self.latest_transformed = {key: self._merged[key] for key in self.output_names if key in self._merged}
        if errors:
            raise ValueError("CompoundTransformer: " + "; ".join(errors))

    def _transform(self) -> dict[str, Any]:  # pragma: no cover - handle_many does the work
        return dict(self.latest_transformed)


# ------------------------------------------------------------------------------ registry

TRANSFORMER_CLASSES: dict[str, type[Transformer]] = {
    cls.type_name: cls
    for cls in (SimpleTransformer, ReverseTransformer, CAImageTransformer, PassThroughTransformer, CompoundTransformer)
}


def build_transformer(spec_or_type: TransformerSpec | Mapping[str, Any] | str, config: Any = None) -> Transformer:
    """Build a transformer from a validated spec, a ``{type, config}`` dict, or a type name + config.

    Type names are case-sensitive; the ``transformer.`` prefix and the seed's typo
    ``CAImageTransfomer`` are accepted. Invalid input raises ConfigError.
    """
    if isinstance(spec_or_type, TransformerSpec):
        spec = spec_or_type
    elif isinstance(spec_or_type, str):
        spec = parse_transformer_spec({"type": spec_or_type, "config": config})
    elif isinstance(spec_or_type, Mapping):
        spec = parse_transformer_spec(spec_or_type)
    else:
        raise ConfigError([f"transformer: expected a TransformerSpec, a {{type, config}} mapping or a type name, "
                           f"got {type(spec_or_type).__name__}"])
    return TRANSFORMER_CLASSES[spec.type](spec.config)
