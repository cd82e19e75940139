"""Model loading from a REAL MLflow server: registry resolution, download cache, pipeline config.

Registrations are slow (seconds each), so the demo model is registered once per session
(``registered_demo_model``) and the other flavours once per module (``flavour_models``).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from model_deploy.runtime.models import (
    LumeModelAdapter,
    ModelCache,
    ModelNotFoundError,
    ModelSourceUnreachable,
    PyfuncPredictAdapter,
    TorchModuleAdapter,
    load_lume_file,
    load_model,
    load_model_from_getter,
)
from model_deploy.runtime.models.cache import PARTIAL_PREFIX
from tests.fixtures.demo_models import (
    make_lume_torch_model,
    make_lume_torch_module,
    reference_torch_outputs,
    register_demo_model,
)
from tests.fixtures.mlflow_server import free_port

pytestmark = pytest.mark.mlflow

X = {"x1": 3.0, "x2": 4.0}


class SumDiffModel(mlflow.pyfunc.PythonModel):
    """A plain pyfunc model (no get_model()): DataFrame in, DataFrame out."""

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow's signature
        import pandas as pd

        return pd.DataFrame({"sum": model_input["x1"] + model_input["x2"],
                             "diff": model_input["x1"] - model_input["x2"]})


@pytest.fixture(scope="module")
def flavour_models(mlflow_server, tmp_path_factory) -> dict[str, str]:
    """A plain pyfunc (config at the run root), a lume TorchModel and a lume TorchModule registered
    with lume-model's own ``register_to_mlflow`` (config of the TorchModel at the model root)."""
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    root = tmp_path_factory.mktemp("flavours")
    config = {"deployment": {"type": "continuous"}, "marker": "run-root"}
    signature = infer_signature(pd.DataFrame([X]), pd.DataFrame([{"sum": 7.0, "diff": -1.0}]))
    with _tracking_uri(mlflow_server.uri), mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=SumDiffModel(), signature=signature,
                                       registered_model_name="plain-pyfunc", pip_requirements=["mlflow"])
        (root / "pv_mappings.yaml").write_text(yaml.safe_dump(config))
        mlflow.log_artifact(str(root / "pv_mappings.yaml"))
    assert str(info.registered_model_version) == "1"

    with contextlib.redirect_stdout(io.StringIO()):
        torch_model = load_lume_file(make_lume_torch_model(root / "tm", 4, ("y1", "y2"))).model
        torch_module = load_lume_file(make_lume_torch_module(root / "mod", 4, ("y1", "y2"))).model
    previous_cwd = os.getcwd()
    os.chdir(root)  # lume-model writes its dump files to the working directory before logging them
    try:
        with _tracking_uri(mlflow_server.uri):
            tm_info = torch_model.register_to_mlflow(
                artifact_path="model", registered_model_name="lume-torchmodel", pip_requirements=["torch"])
            # MLflow 3 defaults to the pt2 format, which needs an input example: use pickle
            torch_module.register_to_mlflow(artifact_path="model", registered_model_name="lume-torchmodule",
                                            pip_requirements=["torch"], serialization_format="pickle")
    finally:
        os.chdir(previous_cwd)
    model_root_config = root / "model-root" / "pv_mappings.yaml"
    model_root_config.parent.mkdir()
    model_root_config.write_text(yaml.safe_dump({"marker": "model-root"}))
    MlflowClient(mlflow_server.uri).log_model_artifact(tm_info.model_id, str(model_root_config))
    return {"pyfunc": "plain-pyfunc", "torchmodel": "lume-torchmodel", "torchmodule": "lume-torchmodule"}


@contextlib.contextmanager
def _tracking_uri(uri: str):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def dead_uri() -> str:
    return f"http://127.0.0.1:{free_port()}"  # bound then released: nothing listens there


# ----------------------------------------------------------------------------- name + version / alias
def test_load_each_version_exact_values_and_pipeline_config(registered_demo_model, model_cache_dir):
    demo = registered_demo_model
    for version in demo.coefficients:
        model = load_model(model_name=demo.name, model_version=version)
        assert isinstance(model, LumeModelAdapter)
        assert model.version == version
        assert model.input_names == ["x1", "x2"] and model.output_names == ["y"]
        assert f"models:/{demo.name}/{version}" in model.source and demo.tracking_uri in model.source
        assert model.evaluate(X) == {"y": demo.expected_y(version, **X)}
        assert model.config_path == model_cache_dir / demo.name / version / "pv_mappings.yaml"
        assert yaml.safe_load(model.config_path.read_text()) == demo.pv_mappings


def test_alias_is_resolved_to_a_concrete_version(registered_demo_model, model_cache_dir):
    demo = registered_demo_model
    by_alias = load_model(model_name=demo.name, model_version=demo.alias)
    assert by_alias.version == demo.alias_version
    assert f"@{demo.alias}" in by_alias.source
    assert by_alias.evaluate(X) == {"y": demo.expected_y(demo.alias_version, **X)}
    assert (model_cache_dir / demo.name / demo.alias_version / ".complete").is_file()

    by_uri = load_model(model_uri=f"models:/{demo.name}@{demo.alias}")
    assert by_uri.version == demo.alias_version
    newest = max(demo.coefficients, key=int)
    assert load_model(model_uri=f"models:/{demo.name}/{newest}").evaluate(X) == {"y": demo.expected_y(newest, **X)}
    assert load_model(model_name=demo.name, model_version="latest").version == newest


# ----------------------------------------------------------------------------- the download cache
def test_cached_pinned_version_loads_without_the_server(registered_demo_model, model_cache_dir, monkeypatch):
    demo = registered_demo_model
    version = max(demo.coefficients, key=int)
    first = load_model(model_name=demo.name, model_version=version)
    entry = ModelCache(model_cache_dir).lookup(demo.name, version)
    assert entry is not None and entry.marker.source == f"models:/{demo.name}/{version}"

    # "pod restart" with the cache on a volume and MLflow gone: nothing is downloaded again
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead_uri())
    again = load_model(model_name=demo.name, model_version=version)
    assert again.evaluate(X) == first.evaluate(X) == {"y": demo.expected_y(version, **X)}
    assert again.config_path == first.config_path and again.config_path.is_file()
    assert ModelCache(model_cache_dir).lookup(demo.name, version).marker == entry.marker  # not re-downloaded


def test_unreachable_server_is_a_fast_clear_error(registered_demo_model, model_cache_dir, monkeypatch):
    demo = registered_demo_model
    uri = dead_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    # an alias must be resolved by the server even if a version is cached; an uncached version too
    for version in (demo.alias, demo.alias_version):
        with pytest.raises(ModelSourceUnreachable, match=f"MLflow tracking server {uri} is unreachable"):
            load_model(model_name=demo.name, model_version=version)
    assert time.monotonic() - started < 15  # not MLflow's minutes of HTTP retries


def test_refresh_downloads_again(registered_demo_model, model_cache_dir):
    demo = registered_demo_model
    first = ModelCache(model_cache_dir)
    load_model(model_name=demo.name, model_version=demo.alias_version)
    before = first.lookup(demo.name, demo.alias_version).marker.downloaded_at
    refreshed = load_model(model_name=demo.name, model_version=demo.alias_version, refresh=True)
    assert refreshed.evaluate(X) == {"y": demo.expected_y(demo.alias_version, **X)}
    assert first.lookup(demo.name, demo.alias_version).marker.downloaded_at > before


def test_concurrent_loaders_share_one_complete_entry(registered_demo_model, tmp_path):
    demo = registered_demo_model
    results: list[object] = []

    def load() -> None:
        try:
            results.append(load_model(model_name=demo.name, model_version=demo.alias_version, cache_dir=tmp_path))
        except Exception as exc:  # surfaced by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 2 and all(not isinstance(r, Exception) for r in results), results
    assert {r.config_path for r in results} == {tmp_path / demo.name / demo.alias_version / "pv_mappings.yaml"}
    assert not list((tmp_path / demo.name).glob(f"{PARTIAL_PREFIX}*"))


# ----------------------------------------------------------------------------- not found
def test_missing_version_alias_and_model_are_clear_errors(registered_demo_model, model_cache_dir):
    demo = registered_demo_model
    available = ", ".join(sorted(demo.coefficients, key=int))
    with pytest.raises(ModelNotFoundError, match=f"registered model '{demo.name}' has no version 99; "
                                                 f"available: {available}$"):
        load_model(model_name=demo.name, model_version="99")
    aliases = f"{demo.alias} -> {demo.alias_version}"
    with pytest.raises(ModelNotFoundError, match=f"has no alias 'prod'; aliases: {aliases}"):
        load_model(model_name=demo.name, model_version="prod")
    with pytest.raises(ModelNotFoundError,
                       match=f"no registered model 'no-such-model' in MLflow at .*{demo.name}"):
        load_model(model_name="no-such-model", model_version="1")
    assert not any(model_cache_dir.glob("no-such-model*"))


# ----------------------------------------------------------------------------- other flavours
def test_plain_pyfunc_is_evaluated_through_predict(flavour_models, model_cache_dir):
    model = load_model(model_name=flavour_models["pyfunc"], model_version="1")
    assert isinstance(model, PyfuncPredictAdapter)
    assert model.input_names == ["x1", "x2"] and model.output_names == ["sum", "diff"]
    assert model.evaluate(X) == {"sum": 7.0, "diff": -1.0}
    assert yaml.safe_load(model.config_path.read_text())["marker"] == "run-root"


def test_lume_register_to_mlflow_torch_model(flavour_models, model_cache_dir):
    model = load_model(model_name=flavour_models["torchmodel"], model_version="1")
    assert isinstance(model, LumeModelAdapter) and "get_lume_model()" in model.source
    inputs = {"x1": 0.5, "x2": -1.0, "x3": 2.0}
    assert model.evaluate(inputs) == pytest.approx(reference_torch_outputs(inputs, 4, ("y1", "y2")), rel=1e-12)
    assert yaml.safe_load(model.config_path.read_text()) == {"marker": "model-root"}


def test_lume_register_to_mlflow_torch_module(flavour_models, model_cache_dir):
    model = load_model(model_name=flavour_models["torchmodule"], model_version="1")
    assert isinstance(model, TorchModuleAdapter) and "pytorch TorchModule" in model.source
    inputs = {"x1": 0.5, "x4": 3.0}
    assert model.evaluate(inputs) == pytest.approx(reference_torch_outputs(inputs, 4, ("y1", "y2")), rel=1e-12)
    assert model.config_path is None


def test_register_demo_model_config_locations(mlflow_server, model_cache_dir):
    """The helper other tests use: config at the model root; evaluate through get_model()."""
    from model_deploy.runtime.demo_models import make_linear_demo_model

    version = register_demo_model(mlflow_server.uri, "demo-config-root", make_linear_demo_model(1.0, 1.0),
                                  {"marker": "model-root"}, alias="champion", config_location="model_root")
    model = load_model(model_uri="models:/demo-config-root@champion")
    assert model.version == version
    assert model.evaluate(X) == {"y": 7.0}
    assert yaml.safe_load(Path(model.config_path).read_text()) == {"marker": "model-root"}


def test_poly_lithic_mlflow_model_getter_config(registered_demo_model, model_cache_dir):
    demo = registered_demo_model
    getter = {"type": "MLflowModelGetter", "args": {"model_name": demo.name, "model_version": demo.alias}}
    model = load_model_from_getter(getter)
    assert model.version == demo.alias_version
    assert model.evaluate(X) == {"y": demo.expected_y(demo.alias_version, **X)}


def test_quickstart_registration_script(mlflow_server, model_cache_dir, capsys):
    import runpy

    from tests.fixtures.demo_models import DEMO_PV_MAPPINGS, REPO_ROOT

    script = runpy.run_path(str(REPO_ROOT / "examples" / "demo" / "register_demo_model.py"))
    assert script["main"](["--tracking-uri", mlflow_server.uri, "--name", "quickstart-demo", "-a", "0.5"]) == 0
    version = capsys.readouterr().out.strip().splitlines()[-1]
    model = load_model(model_name="quickstart-demo", model_version="champion")
    assert model.version == version
    assert model.evaluate(X) == {"y": 0.5 * 3.0 - 4.0}
    assert model.config_path.read_text() == DEMO_PV_MAPPINGS.read_text()
