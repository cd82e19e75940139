"""Model loading without MLflow: adapters, lume-model files, local factories, the download cache."""

from __future__ import annotations

import contextlib
import io
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from model_deploy.runtime.errors import ConfigError
from model_deploy.runtime.models import (
    CacheMarker,
    EvaluateAdapter,
    LumeModelAdapter,
    ModelCache,
    ModelLoadError,
    ModelNotFoundError,
    TorchModuleAdapter,
    adapt_model,
    load_lume_file,
    load_model,
    load_model_from_getter,
    normalise_outputs,
    parse_reference,
)
from model_deploy.runtime.models.cache import MARKER_NAME, PARTIAL_PREFIX, safe_path_component
from tests.fixtures.demo_models import (
    DEMO_PV_MAPPINGS,
    REPO_ROOT,
    make_image_model,
    make_linear_demo_model,
    make_lume_torch_model,
    make_lume_torch_module,
    reference_torch_outputs,
    write_local_factory,
)

OUTPUTS = ("y1", "y2")


@pytest.fixture(scope="module")
def lume_files(tmp_path_factory) -> dict[str, Path]:
    """A 16-input, 2-output TorchModel file and the same model as a TorchModule file."""
    root = tmp_path_factory.mktemp("lume")
    return {"model": make_lume_torch_model(root / "model", 16, OUTPUTS),
            "module": make_lume_torch_module(root / "module", 16, OUTPUTS)}


def quietly(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):  # lume-model prints when it reads .pt files
        return fn(*args, **kwargs)


def sample_inputs(n: int = 16) -> dict[str, float]:
    return {f"x{i}": 0.37 * i - 2.5 for i in range(1, n + 1)}


# ----------------------------------------------------------------------------- output normalisation
def test_outputs_are_normalised_to_python_numbers_and_numpy_arrays():
    image = np.arange(6.0).reshape(2, 3)
    out = normalise_outputs({
        "t0": torch.tensor(1.5, dtype=torch.double), "t2": torch.ones(2, 3), "np_scalar": np.float32(2.5),
        "np_0d": np.array(4.0), "image": image, "plain": 3, "text": "ok",
    })
    assert out["t0"] == 1.5 and type(out["t0"]) is float
    assert isinstance(out["t2"], np.ndarray) and out["t2"].shape == (2, 3)
    assert out["np_scalar"] == 2.5 and type(out["np_scalar"]) is float
    assert out["np_0d"] == 4.0 and type(out["np_0d"]) is float
    assert out["image"] is image  # images stay arrays, not copied
    assert out["plain"] == 3 and out["text"] == "ok"


# ----------------------------------------------------------------------------- LUMEBaseModel
def test_lume_base_model_exact_values_and_int_inputs():
    adapter = adapt_model(make_linear_demo_model(a=2.0, b=-1.0))
    assert isinstance(adapter, LumeModelAdapter)
    assert adapter.input_names == ["x1", "x2"] and adapter.output_names == ["y"]
    assert adapter.evaluate({"x1": 3.0, "x2": 1.5}) == {"y": 4.5}
    # EPICS ints and numpy scalars are accepted (lume ScalarVariables only take floats)
    assert adapter.evaluate({"x1": 3, "x2": np.float32(1.5)}) == {"y": 4.5}


def test_lume_validation_is_kept_and_unknown_inputs_are_named():
    adapter = adapt_model(make_linear_demo_model())
    with pytest.raises(TypeError, match="float"):  # lume-model's own input type check
        adapter.evaluate({"x1": "three", "x2": 1.0})
    with pytest.raises(ValueError, match=r"x3 are not inputs of this model; it takes x1, x2"):
        adapter.evaluate({"x1": 1.0, "x2": 1.0, "x3": 0.0})


# ----------------------------------------------------------------------------- lume-model files
def test_torch_model_file_matches_plain_torch_reference(lume_files):
    adapter = quietly(load_model, local_path=lume_files["model"])
    assert isinstance(adapter, LumeModelAdapter)
    assert adapter.input_names == [f"x{i}" for i in range(1, 17)] and adapter.output_names == list(OUTPUTS)
    assert "TorchModel" in adapter.source and adapter.version is None and adapter.config_path is None
    inputs = sample_inputs()
    outputs = adapter.evaluate(inputs)
    assert all(type(value) is float for value in outputs.values())
    # exact, including lume-model's float32 rounding of python float inputs
    assert outputs == pytest.approx(reference_torch_outputs(inputs, 16, OUTPUTS), rel=1e-12, abs=1e-12)
    exact = reference_torch_outputs(inputs, 16, OUTPUTS, float32_inputs=False)
    assert outputs == pytest.approx(exact, rel=1e-6)


def test_torch_model_missing_inputs_take_their_defaults(lume_files):
    adapter = quietly(load_model, local_path=lume_files["model"])
    outputs = adapter.evaluate({"x3": 1.25})
    assert outputs == pytest.approx(reference_torch_outputs({"x3": 1.25}, 16, OUTPUTS), rel=1e-12)


def test_torch_module_file_matches_reference_and_torch_model(lume_files):
    module = quietly(load_model, local_path=lume_files["module"])
    assert isinstance(module, TorchModuleAdapter)
    assert module.input_names == [f"x{i}" for i in range(1, 17)] and module.output_names == list(OUTPUTS)
    inputs = sample_inputs()
    expected = reference_torch_outputs(inputs, 16, OUTPUTS)
    assert module.evaluate(inputs) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert module.evaluate({"x2": -4.0}) == pytest.approx(reference_torch_outputs({"x2": -4.0}, 16, OUTPUTS),
                                                           rel=1e-12)


def test_torch_module_input_order_is_honoured(tmp_path):
    order = ["x3", "x1", "x2"]
    path = make_lume_torch_module(tmp_path, 3, ("y",), input_order=order)
    adapter = quietly(load_model, local_path=path)
    assert adapter.input_names == order
    inputs = {"x1": 0.5, "x2": -1.5, "x3": 2.0}
    assert adapter.evaluate(inputs) == pytest.approx(reference_torch_outputs(inputs, 3, ("y",)), rel=1e-12)


def test_torch_module_with_overridden_forward_gets_a_tensor(lume_files):
    from lume_model.models import TorchModule

    calls = []

    class ShiftedModule(TorchModule):
        def forward(self, x):
            calls.append(tuple(x.shape))
            return super().forward(x) + 1.0

    base = quietly(load_lume_file, lume_files["module"]).model
    adapter = adapt_model(ShiftedModule(model=base.model))
    inputs = sample_inputs()
    # the tensor path keeps float64 inputs
    exact = reference_torch_outputs(inputs, 16, OUTPUTS, float32_inputs=False)
    expected = {k: v + 1.0 for k, v in exact.items()}
    assert adapter.evaluate(inputs) == pytest.approx(expected, rel=1e-12)
    assert calls == [(1, 16)]


def test_single_lume_file_in_a_directory_is_found(lume_files):
    adapter = quietly(load_model, local_path=lume_files["model"].parent)
    assert isinstance(adapter, LumeModelAdapter)


def test_lume_file_with_custom_class_is_refused_clearly(tmp_path):
    path = tmp_path / "custom.yml"
    path.write_text("model_class: LinearDemoModel\ninput_variables: {}\noutput_variables: {}\n")
    with pytest.raises(ModelLoadError, match="not a lume-model built-in .*model_factory.py"):
        load_model(local_path=path)


def test_lume_file_with_missing_weights_names_the_problem(lume_files, tmp_path):
    broken = tmp_path / "model.yml"
    broken.write_text(lume_files["model"].read_text())  # its .pt files are not next to this copy
    with pytest.raises(ModelLoadError, match=r"cannot build TorchModel.*\.pt"):
        quietly(load_model, local_path=broken)


# ----------------------------------------------------------------------------- local factories
def test_local_factory_directory_poly_lithic_convention(tmp_path):
    write_local_factory(tmp_path, a=4.0, b=0.5)
    adapter = load_model(local_path=tmp_path)
    assert adapter.evaluate({"x1": 1.0, "x2": 2.0}) == {"y": 5.0}
    assert adapter.source.startswith("local factory ") and "model_factory.py:ModelFactory" in adapter.source


def test_local_factory_file_with_class_name(tmp_path):
    path = write_local_factory(tmp_path, a=1.0, b=1.0, file_name="factories.py", class_name="Other")
    assert load_model(local_path=f"{path}:Other").evaluate({"x1": 1.0, "x2": 2.0}) == {"y": 3.0}
    assert load_model(local_path=path, factory_class="Other").evaluate({"x1": 2.0, "x2": 2.0}) == {"y": 4.0}


def test_model_definition_py_with_plain_evaluate_model_and_sibling_import(tmp_path):
    # poly-lithic's file name; the model is a plain class; the factory imports a sibling module
    (tmp_path / "helpers_for_factory_test.py").write_text("OFFSET = 10.0\n")
    (tmp_path / "model_definition.py").write_text(textwrap.dedent("""\
        from helpers_for_factory_test import OFFSET


        class SumModel:
            def evaluate(self, x):
                return {"output": sum(x.values()) + OFFSET}


        class ModelFactory:
            def get_model(self):
                return SumModel()
        """))
    adapter = load_model(local_path=tmp_path)
    assert isinstance(adapter, EvaluateAdapter)
    assert adapter.evaluate({"a": 1.0, "b": 2.0}) == {"output": 13.0}
    assert adapter.input_names == [] and adapter.output_names == []


def test_factory_function_returning_the_model(tmp_path):
    path = tmp_path / "build.py"
    path.write_text("from model_deploy.runtime.demo_models import ImageStatsModel\n\n"
                    "def build():\n    return ImageStatsModel()\n")
    adapter = load_model(local_path=f"{path}:build")
    image = np.array([[0.0, 2.0], [4.0, 6.0]])
    out = adapter.evaluate({"image": image})
    assert adapter.output_names == ["y_max", "y_min", "y_mean", "y_std", "y_img"]
    assert (out["y_max"], out["y_min"], out["y_mean"]) == (6.0, 0.0, 3.0)
    assert out["y_std"] == pytest.approx(np.std(image))
    np.testing.assert_allclose(out["y_img"], image / 6.0)


def test_factory_errors_are_clear(tmp_path):
    write_local_factory(tmp_path, class_name="Builder")
    with pytest.raises(ModelNotFoundError,
                       match=r"no 'ModelFactory' defined; classes with get_model\(\) in it: Builder"):
        load_model(local_path=tmp_path)

    broken = tmp_path / "broken" / "model_factory.py"
    broken.parent.mkdir()
    broken.write_text("class ModelFactory:\n    def get_model(self)\n        return 1\n")
    with pytest.raises(ModelLoadError, match=r"import failed \(line 2\): SyntaxError"):
        load_model(local_path=broken.parent)

    failing = tmp_path / "failing.py"
    failing.write_text("class ModelFactory:\n    def get_model(self):\n        raise RuntimeError('no weights')\n")
    with pytest.raises(ModelLoadError, match=r"failing.py:ModelFactory failed: RuntimeError: no weights"):
        load_model(local_path=failing)

    no_evaluate = tmp_path / "no_evaluate.py"
    no_evaluate.write_text("class ModelFactory:\n    def get_model(self):\n        return object()\n")
    with pytest.raises(ModelLoadError, match=r"has no evaluate\(dict\) method"):
        load_model(local_path=no_evaluate)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="no model_factory.py or model_definition.py"):
        load_model(local_path=empty)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(local_path=tmp_path / "missing")


def test_evaluate_must_return_a_dict(tmp_path):
    class Bad:
        def evaluate(self, inputs):
            return [1.0]

    with pytest.raises(TypeError, match=r"Bad.evaluate\(\) returned list; it must return a dict"):
        adapt_model(Bad()).evaluate({})


def test_demo_example_directory_loads_and_its_config_parses():
    adapter = load_model(local_path=REPO_ROOT / "examples" / "demo")
    assert adapter.evaluate({"x1": 3.0, "x2": 1.0}) == {"y": 5.0}
    from model_deploy.runtime.config import load_config

    config = load_config(DEMO_PV_MAPPINGS)
    assert set(config.input.variables) == {"DEMO:X1", "DEMO:X2"}


def test_image_model_directly():
    out = adapt_model(make_image_model()).evaluate({"image": np.full((3, 4), 7.0)})
    assert out["y_max"] == out["y_min"] == out["y_mean"] == 7.0 and out["y_std"] == 0.0
    assert out["y_img"].shape == (3, 4) and not out["y_img"].any()


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kwargs, message", [
    ({}, "model: nothing to load"),
    ({"model_name": "m", "model_version": "1", "local_path": "x"}, "local_path: .* alternatives"),
    ({"model_name": "m"}, "model_version: missing for model 'm'"),
    ({"model_name": "m", "model_version": "bad alias!"}, "model_version: 'bad alias!' is neither"),
    ({"model_uri": "runs:/abc/model"}, "model_uri: 'runs:/abc/model' is not a registry URI"),
    ({"model_uri": "models:/m/1", "model_name": "m"}, "model_uri: give either"),
    ({"model_name": "m", "model_version": "1", "factory_class": "F"}, "factory_class: only applies"),
])
def test_bad_arguments_raise_config_errors_naming_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        load_model(**kwargs)


@pytest.mark.parametrize("name, version, uri, expected", [
    ("m", 3, None, {"name": "m", "version": "3", "alias": None}),
    ("m", "007", None, {"name": "m", "version": "7", "alias": None}),
    ("m", "champion", None, {"name": "m", "version": None, "alias": "champion"}),
    ("m", "@12", None, {"name": "m", "version": None, "alias": "12"}),
    (None, None, "models:/my-model/4", {"name": "my-model", "version": "4", "alias": None}),
    (None, None, "models:/my-model@champion", {"name": "my-model", "version": None, "alias": "champion"}),
    (None, None, "models:/my-model/latest", {"name": "my-model", "version": None, "alias": "latest"}),
])
def test_model_references(name, version, uri, expected):
    assert parse_reference(name, version, uri).model_dump() == expected


# ----------------------------------------------------------------------------- cache
def marker(name: str = "m", version: str = "1") -> CacheMarker:
    return CacheMarker(model_name=name, version=version, source=f"models:/{name}/{version}",
                       tracking_uri="http://mlflow.invalid", config_file="pv_mappings.yaml")


def fill_entry(tmp: Path, name: str = "m", version: str = "1") -> CacheMarker:
    (tmp / "model").mkdir()
    (tmp / "model" / "MLmodel").write_text("flavors: {}\n")
    (tmp / "pv_mappings.yaml").write_text("deployment: {}\n")
    return marker(name, version)


def test_cache_populate_is_atomic_and_records_the_source(tmp_path):
    cache = ModelCache(tmp_path)
    assert cache.lookup("m", "1") is None
    entry = cache.populate("m", "1", fill_entry)
    assert entry.path == tmp_path / "m" / "1"
    assert entry.model_dir.joinpath("MLmodel").is_file() and entry.config_path == entry.path / "pv_mappings.yaml"
    recorded = json.loads((entry.path / MARKER_NAME).read_text())
    assert recorded["source"] == "models:/m/1" and recorded["tracking_uri"] == "http://mlflow.invalid"
    assert cache.lookup("m", "1") == entry
    assert not list((tmp_path / "m").glob(f"{PARTIAL_PREFIX}*"))


def test_cache_failed_download_leaves_nothing_behind(tmp_path):
    cache = ModelCache(tmp_path)

    def failing(tmp: Path) -> CacheMarker:
        (tmp / "model").mkdir()
        (tmp / "model" / "half.bin").write_bytes(b"\0" * 10)
        raise ConnectionError("network dropped")

    with pytest.raises(ConnectionError):
        cache.populate("m", "1", failing)
    assert cache.lookup("m", "1") is None
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [".1.lock"]


def test_cache_complete_entry_is_reused_and_partials_of_crashed_runs_are_removed(tmp_path):
    cache = ModelCache(tmp_path)
    crashed = tmp_path / "m" / f"{PARTIAL_PREFIX}1-crashed"
    crashed.mkdir(parents=True)
    first = cache.populate("m", "1", fill_entry)
    assert not crashed.exists()

    def must_not_download(tmp: Path) -> CacheMarker:
        raise AssertionError("the complete entry should have been reused")

    assert cache.populate("m", "1", must_not_download) == first
    replaced = cache.populate("m", "1", fill_entry, replace=True)
    assert replaced.marker.downloaded_at > first.marker.downloaded_at


def test_cache_ignores_entries_without_a_valid_marker(tmp_path):
    cache = ModelCache(tmp_path)
    entry = cache.populate("m", "1", fill_entry)
    (entry.path / MARKER_NAME).write_text("{not json")
    assert cache.lookup("m", "1") is None
    (entry.path / MARKER_NAME).unlink()
    assert cache.lookup("m", "1") is None
    # an incomplete directory in the way is replaced by the next download
    assert cache.populate("m", "1", fill_entry).marker.source == "models:/m/1"


def test_cache_dir_from_environment_and_safe_names(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "from-env"))
    assert ModelCache().root == tmp_path / "from-env"
    assert safe_path_component("lcls-cu_inj.v2") == "lcls-cu_inj.v2"
    weird = [safe_path_component(name) for name in ("a/b", "a b", "a:b", "..", "/")]
    assert all("/" not in name and name not in (".", "..") for name in weird)
    assert len(set(weird)) == len(weird)  # hashed suffixes keep distinct names distinct


def test_cache_unwritable_root_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ModelLoadError, match="cannot create .*set MODEL_CACHE_DIR"):
        ModelCache(blocker / "cache").populate("m", "1", fill_entry)
    assert os.path.isfile(blocker)


def test_factory_file_named_in_the_deployment_section(tmp_path):
    write_local_factory(tmp_path, a=1.0, b=2.0, file_name="custom_factory.py", class_name="Maker")
    adapter = load_model(local_path=tmp_path, factory_class="custom_factory.py:Maker")
    assert adapter.evaluate({"x1": 1.0, "x2": 1.0}) == {"y": 3.0}
    write_local_factory(tmp_path, a=1.0, b=3.0, file_name="plain_factory.py")
    adapter = load_model(local_path=tmp_path, factory_class="plain_factory.py")
    assert adapter.evaluate({"x1": 1.0, "x2": 1.0}) == {"y": 4.0}


def test_poly_lithic_local_model_getter_config(tmp_path, monkeypatch):
    write_local_factory(tmp_path / "models", a=5.0, b=0.0, file_name="model_definition.py")
    getter = {"type": "LocalModelGetter",
              "args": {"model_path": "models/model_definition.py", "model_factory_class": "ModelFactory"}}
    monkeypatch.chdir(REPO_ROOT)  # relative to the config file's directory when not found from the cwd
    adapter = load_model_from_getter(getter, base_dir=tmp_path)
    assert adapter.evaluate({"x1": 2.0, "x2": 9.0}) == {"y": 10.0}
    with pytest.raises(ConfigError, match=r"modules.model.config.args.model_path: missing"):
        load_model_from_getter({"type": "LocalModelGetter", "args": {}})
    with pytest.raises(ConfigError, match=r"modules.model.config.type: unknown model getter 'S3Getter'"):
        load_model_from_getter({"type": "S3Getter"})
    with pytest.raises(ConfigError, match=r"args: unknown keys model_stage"):
        load_model_from_getter({"type": "MLflowModelGetter", "args": {"model_name": "m", "model_stage": "prod"}})
