"""Model loading for the runtime: lume-model files, MLflow registered models (download cache),
pyfunc ``get_model()``/``get_lume_model()`` wrappers and local model factories.

    from model_deploy.runtime.models import load_model
    model = load_model(model_name="my_model", model_version="champion")
    model.evaluate({"x1": 1.0, "x2": 2.0})  # -> {"y": ...}
    model.version, model.config_path         # "3", Path(.../pv_mappings.yaml)
"""

from model_deploy.runtime.models.adapters import (
    EvaluateAdapter,
    LumeModelAdapter,
    PyfuncPredictAdapter,
    TorchModuleAdapter,
    adapt_model,
)
from model_deploy.runtime.models.base import (
    ModelAdapter,
    ModelLoadError,
    ModelNotFoundError,
    ModelSourceUnreachable,
    normalise_outputs,
    normalise_value,
)
from model_deploy.runtime.models.cache import CacheMarker, CachedModel, ModelCache, default_cache_dir
from model_deploy.runtime.models.loader import load_model, load_model_from_getter
from model_deploy.runtime.models.local import load_local_model, load_lume_file
from model_deploy.runtime.models.mlflow_source import ModelReference, load_model_directory, parse_reference

__all__ = [
    "CacheMarker",
    "CachedModel",
    "EvaluateAdapter",
    "LumeModelAdapter",
    "ModelAdapter",
    "ModelCache",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelReference",
    "ModelSourceUnreachable",
    "PyfuncPredictAdapter",
    "TorchModuleAdapter",
    "adapt_model",
    "default_cache_dir",
    "load_local_model",
    "load_lume_file",
    "load_model",
    "load_model_from_getter",
    "load_model_directory",
    "normalise_outputs",
    "normalise_value",
    "parse_reference",
]
