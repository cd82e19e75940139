"""Small, deterministic demo models and the MLflow pyfunc wrapper used to register them.

They live in the package (not in tests) because a pyfunc model is pickled by reference: the process
that loads it must be able to import these classes (the runtime image, the quickstart, tests).

* ``LinearDemoModel`` - a lume-model ``LUMEBaseModel``: ``y = a*x1 + b*x2`` (exact values for tests).
* ``ImageStatsModel`` - the seed's image example: image in; ``y_max``, ``y_min``, ``y_mean``,
  ``y_std`` and ``y_img`` (the image scaled to [0, 1]) out.
* ``DemoModelWrapper`` - ``mlflow.pyfunc.PythonModel`` with ``get_model()`` (the seed's contract:
  "the model registered using pyfunc wrapper has a .get_model() method and the model itself has
  a .evaluate() method").
* ``register_pyfunc_model`` - log a model in that wrapper, register it, store its pipeline config
  at ``<name>/pv_mappings.yaml`` in the run (the seed's convention) and set an alias.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

import mlflow.pyfunc
import numpy as np
from lume_model.base import LUMEBaseModel
from lume_model.variables import ScalarVariable


class LinearDemoModel(LUMEBaseModel):
    """y = a*x1 + b*x2; inputs are validated by lume-model (floats, within value_range)."""

    a: float = 2.0
    b: float = -1.0

    def _evaluate(self, input_dict: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {"y": self.a * input_dict["x1"] + self.b * input_dict["x2"]}


def make_linear_demo_model(a: float = 2.0, b: float = -1.0, value_range: tuple[float, float] = (-1e6, 1e6)
                           ) -> LinearDemoModel:
    inputs = [ScalarVariable(name=name, default_value=0.0, value_range=value_range) for name in ("x1", "x2")]
    return LinearDemoModel(input_variables=inputs, output_variables=[ScalarVariable(name="y")], a=a, b=b)


class ImageStatsModel:
    """Image statistics (the seed's Example 3 outputs); a custom model with ``evaluate`` only."""

    input_names = ["image"]
    output_names = ["y_max", "y_min", "y_mean", "y_std", "y_img"]

    def evaluate(self, inputs: dict[str, Any]) -> dict[str, Any]:
        image = np.asarray(inputs["image"], dtype=np.float64)
        if image.ndim != 2:
            raise ValueError(f"image: expected a 2-D array, got shape {image.shape}")
        low, high = float(image.min()), float(image.max())
        span = high - low
        scaled = (image - low) / span if span > 0 else np.zeros_like(image)
        return {"y_max": high, "y_min": low, "y_mean": float(image.mean()), "y_std": float(image.std()),
                "y_img": scaled}


class DemoModelWrapper(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper with ``get_model()``; ``predict`` evaluates one input row."""

    _skip_type_hint_validation = True  # the wrapped model validates its own inputs

    def __init__(self, model: Any):
        self.model = model

    def get_model(self) -> Any:
        return self.model

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow's signature
        if hasattr(model_input, "iloc"):  # a pandas DataFrame: evaluate its first row
            model_input = model_input.iloc[0].to_dict()
        return self.model.evaluate(dict(model_input))


ConfigLocation = Literal["run_model_dir", "model_root", "run_root"]


def register_pyfunc_model(tracking_uri: str, name: str, model: Any,
                          pv_mappings: Mapping[str, Any] | str | Path | None = None, alias: str | None = None,
                          *, config_location: ConfigLocation = "run_model_dir", python_model: Any = None) -> str:
    """Log ``model`` in a ``DemoModelWrapper`` (or ``python_model`` as given), register it as ``name``
    and return the new version. ``pv_mappings`` (dict, YAML text or file path) is stored at
    ``<name>/pv_mappings.yaml`` in the run; ``config_location`` "model_root"/"run_root" put it at the
    model artifact root or the run's artifact root instead."""
    from mlflow import MlflowClient

    wrapper = python_model if python_model is not None else DemoModelWrapper(model)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with _tracking_uri(tracking_uri), tempfile.TemporaryDirectory() as scratch:
        with mlflow.start_run(run_name=f"register-{name}"):
            # explicit requirements: skips MLflow's slow import-capturing dependency inference
            info = mlflow.pyfunc.log_model(name="model", python_model=wrapper, registered_model_name=name,
                                           pip_requirements=["mlflow", "lume-model", "model-deploy-operator"])
            if pv_mappings is not None:
                config_file = Path(scratch) / "pv_mappings.yaml"
                config_file.write_text(_config_text(pv_mappings))
                if config_location == "run_model_dir":
                    mlflow.log_artifact(str(config_file), artifact_path=name)
                elif config_location == "run_root":
                    mlflow.log_artifact(str(config_file))
                elif config_location == "model_root":
                    client.log_model_artifact(info.model_id, str(config_file))
                else:
                    raise ValueError(f"config_location: {config_location!r}; expected run_model_dir, "
                                     "model_root or run_root")
    version = str(info.registered_model_version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def _config_text(pv_mappings: Mapping[str, Any] | str | Path) -> str:
    if isinstance(pv_mappings, Path):
        return pv_mappings.read_text()
    if isinstance(pv_mappings, str):
        is_file = "\n" not in pv_mappings and Path(pv_mappings).is_file()
        return Path(pv_mappings).read_text() if is_file else pv_mappings
    return yaml.safe_dump(dict(pv_mappings), sort_keys=False)


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (start_run, log_model) only uses the global URI: set it, then restore it."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
