"""The model contract the pipeline sees, the errors model loading raises, and output normalisation.

Every model source (lume-model files, MLflow registered models, local factories) ends up as a
``ModelAdapter``: ``evaluate(dict) -> dict`` plus names and where it came from. Outputs are
normalised so the rest of the runtime never sees torch: 0-d tensors/arrays become python numbers,
bigger tensors become numpy arrays, numpy arrays (images) stay arrays.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping

import numpy as np


class ModelLoadError(RuntimeError):
    """A model could not be loaded. The message names what was asked for and how to fix it."""


class ModelNotFoundError(ModelLoadError):
    """The registered model, version, alias, file or factory does not exist."""


class ModelSourceUnreachable(ModelLoadError):
    """The model store (MLflow tracking server) cannot be contacted."""


class ModelAdapter(ABC):
    """A loaded model behind one calling convention.

    Attributes:
        model: the wrapped object (lume model, torch module, pyfunc model, user object).
        input_names / output_names: as declared by the model; empty when it declares none.
        source: human description of where the model came from (logged at start-up, metrics label).
        version: the concrete registry version ("3"), or None for local models.
        config_path: the pipeline config (``pv_mappings.yaml``) shipped with the model, if any.
    """

    def __init__(self, model: Any, input_names: list[str], output_names: list[str]):
        self.model = model
        self.input_names: list[str] = list(input_names)
        self.output_names: list[str] = list(output_names)
        self.source: str = type(model).__name__
        self.version: str | None = None
        self.config_path: Path | None = None

    @abstractmethod
    def evaluate(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Evaluate once: model input name -> value in, output name -> normalised value out."""

    def describe(self, source: str, version: str | None = None, config_path: Path | None = None) -> "ModelAdapter":
        """Record where the model came from; returns self so loaders can chain it."""
        self.source = source
        self.version = version
        self.config_path = config_path
        return self

    @property
    def kind(self) -> str:
        """Short adapter name for logs ("lume", "torch-module", "evaluate", "pyfunc-predict")."""
        return type(self).__name__

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} source={self.source!r} version={self.version!r} "
                f"inputs={self.input_names} outputs={self.output_names}>")


def normalise_value(value: Any) -> Any:
    """One output value: torch tensors and numpy 0-d arrays/scalars become python numbers,
    other tensors become numpy arrays; numpy arrays and plain python values are kept."""
    if isinstance(value, (float, int, bool, str)) or value is None:
        return value  # fast path: np.float64 is a float subclass, but keep it cheap either way
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach()
        if value.ndim == 0:
            return value.item()
        return value.cpu().numpy()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def normalise_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise every value of an output mapping (see ``normalise_value``)."""
    return {name: normalise_value(value) for name, value in outputs.items()}


def unknown_inputs_message(unknown: set[str], known: list[str]) -> str:
    return (f"model inputs {', '.join(sorted(unknown))} are not inputs of this model; it takes "
            f"{', '.join(known)}. Fix the input transformer's variable names to match the model.")

