"""Adapters that put every supported model type behind ``ModelAdapter.evaluate(dict) -> dict``.

``evaluate`` runs on the pipeline's hot path (up to kHz), so each adapter precomputes what it can
(name orders, defaults, dtypes) in ``__init__`` and does only the call itself per evaluation.

* ``LumeModelAdapter``  - any lume-model ``LUMEBaseModel`` (``TorchModel``, custom subclasses). Calls
  ``model.evaluate(dict)``, which validates inputs (types, ranges): that check is part of the model's
  contract, so it is kept, and the adapter adds only a cheap unknown-name check and int->float.
  A plain ``TorchModel`` takes ``lume_torch.FastTorchEvaluator``: the same result, checks and
  warnings as ``TorchModel.evaluate``, about 10x cheaper. Note lume-model 2.0.1's ``TorchModel``
  builds float32 tensors from python floats before casting to its dtype, so inputs carry ~7
  significant digits even for double-precision models (both paths keep that).
* ``TorchModuleAdapter`` - a lume-model ``TorchModule`` (tensor in, tensor out): builds the input
  row in ``input_order`` (missing inputs take the variable's default, as ``TorchModel`` does) and
  maps the output tensor back by ``output_order``. The wrapped ``TorchModel`` still validates (through
  the fast path when ``evaluate_model`` is not overridden).
* ``EvaluateAdapter`` - any object with ``evaluate(dict) -> dict`` (the seed's pyfunc ``get_model()``
  contract, local factories).
* ``PyfuncPredictAdapter`` - a plain MLflow pyfunc model without ``get_model()``: see its docstring.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from model_deploy.runtime.models.lume_torch import FastTorchEvaluator, fast_path_problem
from model_deploy.runtime.models.base import (
    ModelAdapter,
    ModelLoadError,
    normalise_outputs,
    normalise_value,
    unknown_inputs_message,
)


def _as_float_if_number(value: Any) -> Any:
    """lume ScalarVariables accept only floats: EPICS ints and numpy scalars are converted."""
    if isinstance(value, float):
        return value
    if isinstance(value, (int, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return float(value)
    return value


def _names(value: Any) -> list[str]:
    """A list of names from a model attribute, or [] when it is missing or not a list of strings."""
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    return []


def _declared_names(model: Any, attribute: str) -> list[str]:
    try:  # properties of user models may raise; the names are informational only
        return _names(getattr(model, attribute, None))
    except Exception:
        return []


def _no_grad_context(model: Any):
    """torch.no_grad() for torch models (no autograd graph per call), a null context otherwise."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return torch.no_grad
    return contextlib.nullcontext


def _lume_classes() -> tuple[type | None, type | None]:
    """(LUMEBaseModel, TorchModule) if lume-model is already imported (a lume object exists only then)."""
    base = sys.modules.get("lume_model.base")
    torch_module = sys.modules.get("lume_model.models.torch_module")
    return (getattr(base, "LUMEBaseModel", None), getattr(torch_module, "TorchModule", None))


class LumeModelAdapter(ModelAdapter):
    """A lume-model ``LUMEBaseModel``: ``evaluate`` validates inputs, then runs ``_evaluate``."""

    def __init__(self, model: Any):
        super().__init__(model, list(model.input_names), list(model.output_names))
        self._known = frozenset(self.input_names)
        self._evaluate = model.evaluate
        torch_model = sys.modules.get("lume_model.models.torch_model")
        is_torch = torch_model is not None and isinstance(model, torch_model.TorchModel)
        self._grad_context = sys.modules["torch"].no_grad if is_torch else contextlib.nullcontext
        # TorchModel.evaluate's result without its per-call overhead, when that is exact (lume_torch.py).
        self.fast_path_problem = fast_path_problem(model) if is_torch else "not a TorchModel"
        self._fast = FastTorchEvaluator(model) if self.fast_path_problem is None else None

    @property
    def kind(self) -> str:
        return "LumeModelAdapter (TorchModel fast path)" if self._fast is not None else "LumeModelAdapter"

    def evaluate(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if not self._known.issuperset(inputs):
            raise ValueError(unknown_inputs_message(set(inputs) - self._known, self.input_names))
        values = {name: _as_float_if_number(value) for name, value in inputs.items()}
        if self._fast is not None:
            outputs = self._fast.evaluate(values)
            if outputs is not None:  # None: a non-float input, which lume's own path handles
                return normalise_outputs(outputs)
        with self._grad_context():
            outputs = self._evaluate(values)
        return normalise_outputs(outputs)


class TorchModuleAdapter(ModelAdapter):
    """A lume-model ``TorchModule`` (tensor in, tensor out), evaluated from a dict of numbers.

    ``TorchModule.forward`` turns its input tensor back into a dict of tensors for the wrapped
    ``TorchModel``, whose validation then itemizes every tensor: 2-3x slower than evaluating from
    numbers. So when ``forward`` is not overridden, the adapter calls the module's own hooks
    (``evaluate_model`` then ``manipulate_output``) with a dict of numbers - same validation, same
    defaults for missing inputs - and picks the outputs by ``output_order``. A subclass that
    overrides ``forward`` gets a [1, n_inputs] tensor instead.

    Precision: like ``TorchModel.evaluate`` itself, lume-model turns python float inputs into
    float32 tensors before casting to the model's dtype (~7 significant digits); the tensor path
    of an overridden ``forward`` keeps float64.
    """

    def __init__(self, module: Any):
        import torch
        from lume_model.models.torch_module import TorchModule

        super().__init__(module, list(module.input_order), list(module.output_order))
        lume_model = module.model
        defaults = {var.name: var.default_value for var in lume_model.input_variables}
        missing = [name for name in self.input_names if defaults.get(name) is None]
        if missing:
            raise ModelLoadError(f"TorchModule input_order names {', '.join(missing)} have no default "
                                 "value in the wrapped TorchModel's input_variables; give every input a "
                                 "default_value")
        self._defaults = [float(defaults[name]) for name in self.input_names]
        self._known = frozenset(self.input_names)
        self._dtype = lume_model.dtype  # the property re-applies precision: read it once, here
        self._device = lume_model.device
        self._torch = torch
        self._uses_default_forward = type(module).forward is TorchModule.forward
        # evaluate_model is `self._model.evaluate(x)` unless overridden: then the fast path is exact.
        plain_evaluate = type(module).evaluate_model is TorchModule.evaluate_model
        self.fast_path_problem = (fast_path_problem(lume_model) if plain_evaluate
                                  else f"{type(module).__name__} overrides evaluate_model")
        self._fast = FastTorchEvaluator(lume_model) if self.fast_path_problem is None else None
        module.eval()

    @property
    def kind(self) -> str:
        return "TorchModuleAdapter (TorchModel fast path)" if self._fast is not None else "TorchModuleAdapter"

    def evaluate(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if not self._known.issuperset(inputs):
            raise ValueError(unknown_inputs_message(set(inputs) - self._known, self.input_names))
        if self._uses_default_forward:
            values = {name: _as_float_if_number(value) for name, value in inputs.items()}
            with self._torch.no_grad():
                model_outputs = self._fast.evaluate(values) if self._fast is not None else None
                if model_outputs is None:
                    model_outputs = self.model.evaluate_model(values)
                outputs = self.model.manipulate_output(model_outputs)
            return {name: normalise_value(outputs[name]) for name in self.output_names}
        return self._evaluate_with_forward(inputs)

    def _evaluate_with_forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        row = [inputs.get(name, default) for name, default in zip(self.input_names, self._defaults)]
        torch = self._torch
        with torch.no_grad():
            x = torch.tensor([row], dtype=self._dtype, device=self._device)
            y = self.model(x)
        if y.ndim == 0:  # forward squeezes: one output of one sample is 0-d
            return {self.output_names[0]: y.item()}
        if y.ndim == 1 and y.shape[0] == len(self.output_names):
            return dict(zip(self.output_names, y.tolist()))
        return {name: normalise_value(y[..., index]) for index, name in enumerate(self.output_names)}


class EvaluateAdapter(ModelAdapter):
    """Any object with ``evaluate(dict) -> dict`` (custom models, local factories)."""

    def __init__(self, model: Any):
        super().__init__(model, _declared_names(model, "input_names"), _declared_names(model, "output_names"))
        self._evaluate = model.evaluate
        self._grad_context = _no_grad_context(model)

    def evaluate(self, inputs: dict[str, Any]) -> dict[str, Any]:
        with self._grad_context():
            outputs = self._evaluate(inputs)
        if not isinstance(outputs, Mapping):
            raise TypeError(f"{type(self.model).__name__}.evaluate() returned {type(outputs).__name__}; "
                            "it must return a dict of output name -> value")
        return normalise_outputs(outputs)


class PyfuncPredictAdapter(ModelAdapter):
    """A plain MLflow pyfunc model (no ``get_model()``/``get_lume_model()``), evaluated via predict.

    Input: when the model's signature declares named columns, ``predict`` gets a one-row pandas
    DataFrame with those columns (what MLflow's schema enforcement expects); otherwise it gets
    the input dict itself (what lume-model's own pyfunc wrapper and dict-based models expect).
    Output: a dict is used as is; a DataFrame/Series gives its first row; an array or list is
    matched to the output names of the signature (one value per output, in order).
    """

    def __init__(self, pyfunc_model: Any):
        inputs, outputs, columnar = _signature_names(pyfunc_model)
        super().__init__(pyfunc_model, inputs, outputs)
        self._columnar = columnar
        self._predict = pyfunc_model.predict

    def evaluate(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self._columnar:
            import pandas as pd

            payload: Any = pd.DataFrame([inputs])
        else:
            payload = inputs
        return prediction_to_dict(self._predict(payload), self.output_names)


def _signature_names(pyfunc_model: Any) -> tuple[list[str], list[str], bool]:
    """(input names, output names, inputs are named columns) from a pyfunc model's signature."""
    metadata = getattr(pyfunc_model, "metadata", None)
    signature = getattr(metadata, "signature", None)
    if signature is None:
        return [], [], False
    inputs = signature.inputs
    outputs = signature.outputs
    input_names = _names(inputs.input_names()) if inputs is not None and inputs.has_input_names() else []
    output_names = _names(outputs.input_names()) if outputs is not None and outputs.has_input_names() else []
    columnar = bool(input_names) and not inputs.is_tensor_spec()
    return input_names, output_names, columnar


def prediction_to_dict(prediction: Any, output_names: list[str]) -> dict[str, Any]:
    """A pyfunc ``predict`` result as output name -> normalised value (see PyfuncPredictAdapter)."""
    if isinstance(prediction, Mapping):
        return normalise_outputs(prediction)
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(prediction, pandas.DataFrame):
        if len(prediction.index) == 0:
            raise ValueError("pyfunc predict returned an empty DataFrame")
        return normalise_outputs(prediction.iloc[0].to_dict())
    if pandas is not None and isinstance(prediction, pandas.Series):
        return normalise_outputs(prediction.to_dict())
    values = np.asarray(prediction)
    if output_names:
        flat = values.reshape(-1) if values.ndim <= 1 else values[0].reshape(-1)
        if flat.shape[0] == len(output_names):
            return {name: normalise_value(value) for name, value in zip(output_names, flat)}
    raise ValueError(
        f"pyfunc predict returned {type(prediction).__name__} of shape {values.shape}, which cannot be "
        f"matched to output names {output_names or '(none: the model has no output signature)'}; "
        "return a dict or a DataFrame with named columns, or log the model with an output signature")


def adapt_model(model: Any) -> ModelAdapter:
    """Wrap a loaded model object in the adapter that matches its type."""
    if isinstance(model, ModelAdapter):
        return model
    lume_base, torch_module = _lume_classes()
    if torch_module is not None and isinstance(model, torch_module):
        return TorchModuleAdapter(model)
    if lume_base is not None and isinstance(model, lume_base):
        return LumeModelAdapter(model)
    if callable(getattr(model, "evaluate", None)):
        return EvaluateAdapter(model)
    pyfunc = sys.modules.get("mlflow.pyfunc")
    if pyfunc is not None and isinstance(model, pyfunc.PyFuncModel):
        return PyfuncPredictAdapter(model)
    raise ModelLoadError(
        f"model object of type {type(model).__module__}.{type(model).__qualname__} has no evaluate(dict) "
        "method; return a lume-model model (LUMEBaseModel, TorchModel, TorchModule) or an object with "
        "evaluate(inputs: dict) -> dict")
