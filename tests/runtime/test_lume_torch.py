"""The TorchModel fast path (models/lume_torch.py) against lume-model's own ``TorchModel.evaluate``.

Every comparison is exact: the same output values bit for bit (and types), the same warnings printed,
the same exception type and message. Models are random (seeded) and use lume's real features: both
precisions, botorch input/output transformers, a Linear output transformer, a callable transformer,
default values for missing inputs, range validation configs and constant variables.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lume_model")

from botorch.models.transforms.input import AffineInputTransform  # noqa: E402  (a lume-model dependency)
from lume_model.models import TorchModel  # noqa: E402
from lume_model.variables import ScalarVariable  # noqa: E402

from model_deploy.runtime.models.adapters import LumeModelAdapter, adapt_model  # noqa: E402
from model_deploy.runtime.models.lume_torch import FastTorchEvaluator, fast_path_problem  # noqa: E402


def make_model(n_inputs: int = 6, n_outputs: int = 3, *, seed: int = 0, precision: str = "double",
               output_format: str = "raw", transformers: bool = False, value_range=(-2.0, 2.0),
               input_validation_config=None, output_validation_config=None, output_range=None,
               constant: bool = False) -> TorchModel:
    torch.manual_seed(seed)
    dtype = torch.double if precision == "double" else torch.float
    network = torch.nn.Sequential(torch.nn.Linear(n_inputs, 8), torch.nn.Tanh(),
                                  torch.nn.Linear(8, n_outputs)).to(dtype)
    inputs = [ScalarVariable(name=f"in_{i}", default_value=0.1 * (i + 1), value_range=value_range)
              for i in range(n_inputs)]
    if constant:
        inputs[-1] = ScalarVariable(name=f"in_{n_inputs - 1}", default_value=0.5, value_range=(0.5, 0.5),
                                    is_constant=True)
    outputs = [ScalarVariable(name=f"out_{j}", value_range=output_range) for j in range(n_outputs)]
    extra: dict[str, Any] = {}
    if transformers:
        scale = AffineInputTransform(n_inputs, coefficient=torch.rand(n_inputs) + 0.5, offset=torch.rand(n_inputs))
        unscale = AffineInputTransform(n_outputs, coefficient=torch.rand(n_outputs) + 0.5,
                                       offset=torch.rand(n_outputs))
        linear = torch.nn.Linear(n_outputs, n_outputs)
        extra = {"input_transformers": [scale], "output_transformers": [unscale, linear, lambda y: y * 2.0]}
    return TorchModel(model=network, input_variables=inputs, output_variables=outputs, precision=precision,
                      output_format=output_format, input_validation_config=input_validation_config,
                      output_validation_config=output_validation_config, **extra)


def outcome(function, inputs: dict[str, Any]) -> tuple:
    """(kind, value, printed): what a call returned or raised, and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            result = function(dict(inputs))
        except Exception as exc:  # the comparison includes the error
            return ("error", (type(exc), str(exc)), printed.getvalue())
    return ("ok", result, printed.getvalue())


def assert_same_outcome(fast: tuple, lume: tuple) -> None:
    assert fast[0] == lume[0], (fast, lume)
    assert fast[2] == lume[2]  # the same warnings, in the same order
    if fast[0] == "error":
        assert fast[1] == lume[1]
        return
    assert list(fast[1]) == list(lume[1])
    for name, value in lume[1].items():
        other = fast[1][name]
        assert type(other) is type(value), name
        if isinstance(value, torch.Tensor):
            assert other.dtype == value.dtype and other.shape == value.shape
            assert torch.equal(other, value) or (value.isnan().all() and other.isnan().all()), name
        else:
            assert other == value or (math.isnan(value) and math.isnan(other)), (name, other, value)


def random_inputs(rng: random.Random, names: list[str], *, spread: float = 1.5, drop: float = 0.0,
                  numpy_share: float = 0.0) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for name in rng.sample(names, len(names)):  # any order: lume validates in the caller's order
        if rng.random() < drop:
            continue
        value = rng.uniform(-spread, spread)
        inputs[name] = np.float64(value) if rng.random() < numpy_share else value
    return inputs


MODEL_VARIANTS = {
    "double-raw": {},
    "single-raw": {"precision": "single"},
    "double-transformers": {"transformers": True},
    "single-transformers": {"precision": "single", "transformers": True},
    "tensor-output": {"output_format": "tensor"},
    "variable-output": {"output_format": "variable", "transformers": True},
    "one-output": {"n_outputs": 1},
    "error-config": {"input_validation_config": {"in_0": "error", "in_1": "none"}},
    "output-ranges": {"output_range": (-0.3, 0.3), "output_validation_config": {"out_0": "error"}},
    "unbounded": {"value_range": None},
    "constant-input": {"constant": True},
}


@pytest.mark.parametrize("variant", sorted(MODEL_VARIANTS))
def test_fast_path_equals_lume_evaluate(variant):
    model = make_model(seed=len(variant), **MODEL_VARIANTS[variant])
    assert fast_path_problem(model) is None
    fast = FastTorchEvaluator(model)
    rng = random.Random(variant)
    kinds = set()
    for trial in range(60):
        inputs = random_inputs(rng, list(model.input_names), spread=2.5 if trial % 3 == 0 else 1.5,
                               drop=0.3 if trial % 4 == 0 else 0.0, numpy_share=0.3 if trial % 5 == 0 else 0.0)
        if not inputs:
            continue
        lume = outcome(model.evaluate, inputs)
        assert_same_outcome(outcome(fast.evaluate, inputs), lume)
        kinds.add(lume[0] if not lume[2] else "warned")
    # The trials exercised the paths the variant is about.
    if variant in ("error-config", "output-ranges"):
        assert "error" in kinds
    if variant in ("double-raw", "constant-input"):
        assert "warned" in kinds


def test_float32_rounding_of_python_floats_is_kept():
    model = make_model(n_inputs=2, n_outputs=1)
    fast = FastTorchEvaluator(model)
    value = 0.1234567890123  # not representable in float32
    assert fast.evaluate({"in_0": value, "in_1": 0.2}) == model.evaluate({"in_0": value, "in_1": 0.2})
    # numpy float64 inputs are rounded too (lume's pydantic input check makes them python floats)
    as_numpy = {"in_0": np.float64(value), "in_1": np.float64(0.2)}
    assert fast.evaluate(dict(as_numpy)) == model.evaluate(dict(as_numpy)) == model.evaluate({"in_0": value, "in_1": 0.2})
    unrounded = model.model(torch.tensor([[value, 0.2]], dtype=torch.double))[0, 0].item()
    assert fast.evaluate({"in_0": value, "in_1": 0.2})["out_0"] != unrounded


def test_values_beyond_float32_range_become_inf_as_in_lume(recwarn):
    model = make_model(n_inputs=2, n_outputs=1, value_range=None)
    fast = FastTorchEvaluator(model)
    inputs = {"in_0": 1e39, "in_1": 0.2}
    assert_same_outcome(outcome(fast.evaluate, inputs), outcome(model.evaluate, inputs))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_non_float_inputs_are_left_to_lume():
    model = make_model(n_inputs=2, n_outputs=1)
    fast = FastTorchEvaluator(model)
    assert fast.evaluate({"in_0": torch.tensor(0.5), "in_1": 0.2}) is None
    assert fast.evaluate({"in_0": True, "in_1": 0.2}) is None
    assert fast.evaluate({}) is None  # lume raises for an empty input dict; keep its error
    adapter = adapt_model(model)
    tensor_inputs = {"in_0": torch.tensor(0.5, dtype=torch.double), "in_1": torch.tensor(0.2, dtype=torch.double)}
    assert adapter.evaluate(dict(tensor_inputs)) == model.evaluate(dict(tensor_inputs))
    with pytest.raises(ValueError, match="valid number"):  # lume's own input check still answers
        adapter.evaluate({"in_0": "0.5", "in_1": 0.2})


def test_adapter_uses_the_fast_path_and_matches_lume():
    model = make_model(transformers=True)
    adapter = adapt_model(model)
    assert isinstance(adapter, LumeModelAdapter) and adapter.fast_path_problem is None
    assert "fast path" in adapter.kind
    inputs = {"in_0": 1, "in_1": np.int32(2), "in_2": 0.3, "in_3": -0.4, "in_4": 0.5, "in_5": -1.6}
    converted = {name: float(value) for name, value in inputs.items()}  # the adapter turns ints into floats
    assert adapter.evaluate(inputs) == model.evaluate(converted)


def test_overridden_methods_and_variables_keep_lume_path():
    class ScaledModel(TorchModel):
        def _evaluate(self, input_dict):
            return {name: value * 10 for name, value in super()._evaluate(input_dict).items()}

    base = make_model(n_inputs=2, n_outputs=1)
    scaled = ScaledModel(model=base.model, input_variables=base.input_variables,
                         output_variables=base.output_variables, output_format="raw")
    assert "overrides _evaluate" in fast_path_problem(scaled)
    with pytest.raises(ValueError, match="no exact fast path"):
        FastTorchEvaluator(scaled)
    adapter = adapt_model(scaled)
    assert "fast path" not in adapter.kind
    inputs = {"in_0": 0.25, "in_1": -0.5}
    assert adapter.evaluate(dict(inputs)) == scaled.evaluate(dict(inputs))
    assert adapter.evaluate(dict(inputs))["out_0"] == pytest.approx(10 * base.evaluate(dict(inputs))["out_0"])

    class StrictVariable(ScalarVariable):
        def validate_value(self, value, config=None):
            raise ValueError("strict")

    strict = make_model(n_inputs=2, n_outputs=1)
    strict.input_variables[0] = StrictVariable(name="in_0", default_value=0.1)
    assert "overrides validate_value" in fast_path_problem(strict)
    assert "fast path" not in adapt_model(strict).kind


def test_torch_module_adapter_takes_the_fast_path_for_its_torch_model():
    from lume_model.models import TorchModule

    model = make_model(seed=3)  # TorchModule moves transformers to a device: they must be Modules
    module = TorchModule(model=model, input_order=list(reversed(model.input_names)), output_order=["out_2", "out_0"])
    adapter = adapt_model(module)
    assert "fast path" in adapter.kind
    rng = random.Random(7)
    for _ in range(20):
        inputs = random_inputs(rng, list(model.input_names), drop=0.2) or {"in_0": 0.5}
        expected = module.manipulate_output(model.evaluate(dict(inputs)))
        assert adapter.evaluate(dict(inputs)) == {name: expected[name] for name in ("out_2", "out_0")}
