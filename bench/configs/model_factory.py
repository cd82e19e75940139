"""Local model factory shared by both runtimes in the benchmark.

poly-lithic's ``LocalModelGetter`` (``model_path: .../model_factory.py``, ``model_factory_class:
ModelFactory``) and our ``model-manager -l DIR`` both import this file by path and call
``ModelFactory().get_model()``. The bench copies it next to ``model.yml`` (a lume-model 2.0.1
TorchModel dump written by ``bench/runtime_bench.py``), so both processes load the identical model
files. Keep it free of project imports: it also runs inside poly-lithic's venv.
"""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = Path(__file__).resolve().parent / "model.yml"


class ModelFactory:
    """poly-lithic / model_manager local factory contract: ``get_model()`` returns the model."""

    def __init__(self) -> None:
        from lume_model.models import TorchModel  # imported here: heavy (torch), only when loading

        # The dump references model_model.pt by a path relative to the YAML's directory.
        self.model = TorchModel(str(MODEL_FILE))

    def get_model(self):
        return self.model
