"""``TorchModel.evaluate`` without its per-call overhead, for the runtime's hot path.

lume-model 2.0.1's ``TorchModel.evaluate`` costs 0.4-1 ms for a 16-input MLP whose forward pass takes
about 30 µs. Most of it is bookkeeping that does not change between calls: the ``dtype`` property
re-applies the precision to the whole network (``model.to(dtype)``) every time it is read (three times
per call), inputs go through a pydantic model, become one tensor each (twice), and every value is
range-checked through the variable's pydantic object. The runtime evaluates the same model with python
floats up to thousands of times a second, so ``FastTorchEvaluator`` does the constant work once and,
per call, only what lume does for *these* values:

* the same numbers: a float input (python or numpy float64, which lume's pydantic check turns into a
  python float) is rounded to float32 first, as ``torch.tensor(value)`` in lume's ``format_inputs``
  does, so a double-precision model sees ~7 significant digits, exactly as with ``TorchModel.evaluate``;
  missing inputs take the variable's default in the model's dtype;
* the same checks: every input (and every filled-in default) and every output is range-checked with
  the variable's own validation config. A value inside its range is accepted without a call; any
  other value goes to the variable's ``validate_value``, so the warning printed or the error raised
  is lume's own, word for word;
* the same transformers, network and output parsing (lume's ``_transform_inputs``/``_transform_outputs``
  are called as they are; only the ``raw`` output of a [1, n] tensor is read with one ``tolist()``).

``fast_path_problem`` decides once per model whether this is exact: a plain ``TorchModel`` (or a
subclass that overrides none of the methods involved) with only ``ScalarVariable``s. Per call, any
input that is not a float (tensors, arrays, strings, bools) takes lume's own ``evaluate`` unchanged.
tests/runtime/test_lume_torch.py compares both paths bit for bit on random models and inputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# TorchModel methods whose behaviour the fast path reproduces; a subclass overriding one of them
# keeps lume's path.
_MODEL_METHODS = (
    "evaluate", "_evaluate", "input_validation", "output_validation", "_fill_default_inputs",
    "_arrange_inputs", "_transform_inputs", "_transform_outputs", "_parse_outputs", "_prepare_outputs",
)
_VARIABLE_METHODS = ("validate_value", "_validate_value_type", "_validate_value_is_within_range",
                     "_value_is_within_range")


def fast_path_problem(model: Any) -> str | None:
    """Why ``model`` cannot use ``FastTorchEvaluator`` exactly, or None when it can."""
    from lume_model.models.torch_model import TorchModel
    from lume_model.variables import ScalarVariable

    if not isinstance(model, TorchModel):
        return f"{type(model).__name__} is not a lume-model TorchModel"
    for method in _MODEL_METHODS:
        if getattr(type(model), method) is not getattr(TorchModel, method):
            return f"{type(model).__name__} overrides {method}"
    for variable in [*model.input_variables, *model.output_variables]:
        if not isinstance(variable, ScalarVariable):
            return f"variable {variable.name!r} is a {type(variable).__name__}, not a ScalarVariable"
        for method in _VARIABLE_METHODS:
            if getattr(type(variable), method) is not getattr(ScalarVariable, method):
                return f"variable {variable.name!r} ({type(variable).__name__}) overrides {method}"
    return None


class _RangeCheck:
    """One variable's validation as lume runs it, with the common in-range case decided inline."""

    __slots__ = ("variable", "config", "low", "high", "skip")

    def __init__(self, variable: Any, config: Any):
        self.variable = variable
        self.config = config  # what lume passes: None (the variable's default) or the configured value
        self.skip = config == "none"  # lume's `if config != "none"`: no range check at all
        value_range = variable.value_range
        if variable.is_constant:
            self.low, self.high = math.inf, -math.inf  # never "inside": constants always go to lume
        elif value_range is None:
            self.low, self.high = -math.inf, math.inf
        else:
            self.low, self.high = float(value_range[0]), float(value_range[1])

    def __call__(self, value: float) -> None:
        # Outside [low, high] (or NaN) lume may still accept it within value_range_tolerance: let it
        # decide, print or raise.
        if not self.skip and not (self.low <= value <= self.high):
            self.variable.validate_value(value, config=self.config)


class FastTorchEvaluator:
    """Evaluates a lume ``TorchModel`` exactly like ``model.evaluate``; see the module docstring.

    Only for models where ``fast_path_problem(model)`` is None. Not thread-safe per instance beyond
    what the model itself is (the runtime evaluates on one worker thread).
    """

    def __init__(self, model: Any):
        import torch

        problem = fast_path_problem(model)
        if problem is not None:
            raise ValueError(f"no exact fast path: {problem}")
        self.model = model
        self._torch = torch
        self._dtype = model.dtype  # the property re-applies precision to the network: read it once
        self._device = model.device
        self._names = [variable.name for variable in model.input_variables]
        self._index = {name: index for index, name in enumerate(self._names)}
        self._output_names = [variable.name for variable in model.output_variables]
        self._raw_outputs = model.output_format.lower() != "tensor"
        input_config = model.input_validation_config
        output_config = model.output_validation_config
        self._input_checks = [
            _RangeCheck(variable, None if input_config is None else input_config.get(variable.name))
            for variable in model.input_variables
        ]
        self._output_checks = [
            _RangeCheck(variable, None if output_config is None else output_config.get(variable.name))
            for variable in model.output_variables
        ]
        # Defaults as lume builds them, torch.tensor(default, dtype), read back as python floats.
        defaults = torch.tensor([variable.default_value for variable in model.input_variables], dtype=self._dtype)
        self._defaults = np.asarray(defaults.tolist(), dtype=np.float64)

    def evaluate(self, inputs: dict[str, Any]) -> dict[str, Any] | None:
        """``model.evaluate(inputs)``'s result, or None when an input is not a float (use lume then).

        Unknown input names raise ValueError, as lume's own validation does.
        """
        if not inputs:
            return None  # lume's _arrange_inputs cannot build a batch from no inputs: keep its error
        index = self._index
        given: list[int] = []  # positions in the caller's order: lume validates in that order
        values: list[float] = []
        for name, value in inputs.items():
            position = index.get(name)
            if position is None:
                raise ValueError(f"{name!r} is not in list")  # lume's input_names.index(name)
            if not isinstance(value, float):  # np.float64 is a float too: lume's pydantic check makes it one
                return None
            given.append(position)
            values.append(value)
        row = self._defaults.copy()
        with np.errstate(over="ignore"):  # beyond float32's range: inf, silently, as torch.tensor(value)
            row[given] = np.asarray(values, dtype=np.float32)

        checks = self._input_checks
        for position in given:
            checks[position](float(row[position]))
        if len(given) < len(checks):  # then the defaults lume filled in, in variable order
            for position in sorted(set(range(len(checks))).difference(given)):
                checks[position](float(row[position]))

        torch = self._torch
        model = self.model
        with torch.no_grad():
            x = torch.from_numpy(row).to(dtype=self._dtype, device=self._device)
            y = model._transform_outputs(model.model(model._transform_inputs(x)))
            if self._raw_outputs and y.ndim == 2 and y.shape[0] == 1 and y.shape[1] == len(self._output_names):
                outputs = dict(zip(self._output_names, y[0].tolist()))
                for check, value in zip(self._output_checks, outputs.values()):
                    check(value)
                return outputs
            outputs = model._prepare_outputs(model._parse_outputs(y))
        model.output_validation(outputs)
        return outputs
