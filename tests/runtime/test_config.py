"""Pipeline config loading: the seed's examples unchanged, poly-lithic modules, clear errors."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from model_deploy.runtime.config import (
    PipelineConfig,
    config_checksum,
    load_config,
)
from model_deploy.runtime.errors import ConfigError
from model_deploy.runtime.transformers import build_transformer

CONFIGS = Path(__file__).parent / "configs"
SEED = Path("/work/shared/seeds/001_7cdda0b3926e07df.txt")


def raw(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def problems_of(source) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(source)
    text = str(caught.value)
    assert "Traceback" not in text and "pydantic" not in text and "errors.pydantic.dev" not in text
    assert text == "\n".join(caught.value.problems)
    return caught.value.problems


# ------------------------------------------------------------------------------ the seed's examples


@pytest.mark.skipif(not SEED.exists(), reason="seed document not available")
@pytest.mark.parametrize("number", [1, 2, 3])
def test_example_files_are_verbatim_copies_of_the_seed(number):
    assert (CONFIGS / f"seed_example{number}.yaml").read_text() in SEED.read_text()


def test_seed_example1_loads():
    config = load_config(CONFIGS / "seed_example1.yaml")
    assert isinstance(config, PipelineConfig) and config.source_format == "legacy"
    assert config.deployment.type == "continuous" and config.deployment.rate is None
    assert config.input.method == "k2eg" and list(config.input.variables) == ["LUME:MLFLOW:TEST_B", "LUME:MLFLOW:TEST_A"]
    assert config.input.variables["LUME:MLFLOW:TEST_A"].name == "LUME:MLFLOW:TEST_A"
    assert config.input_transform.type == "SimpleTransformer"
    assert {k: v.type for k, v in config.model_outputs.items()} == {"y": "scalar"}
    assert config.output.method == "k2eg" and list(config.output.variables) == ["LUME:MLFLOW:TEST_G"]


def test_seed_example2_loads_with_its_yaml_quirk(caplog):
    with caplog.at_level(logging.WARNING, logger="model_deploy.runtime.config"):
        config = load_config(CONFIGS / "seed_example2.yaml")
    # `type:"scalar"` (no space) is one YAML string; it is read as type scalar, with a warning.
    assert raw("seed_example2.yaml")["outputs_model"]["config"]["variables"]["sigma_x"] == 'type:"scalar"'
    assert {k: v.type for k, v in config.model_outputs.items()} == dict.fromkeys(
        ["sigma_x", "sigma_y", "sigma_z", "norm_emit_x", "norm_emit_y"], "scalar")
    assert "outputs_model.config.variables.sigma_x: read 'type:\"scalar\"' as type scalar" in caplog.text
    assert len(config.input.variables) == 16 and all(v.proto == "ca" for v in config.input.variables.values())
    assert "LUME:MLFLOW:EXAMPLE:COMBINED" in config.output.variables


def test_seed_example2_transformers_compute_the_injector_inputs():
    config = load_config(CONFIGS / "seed_example2.yaml")
    transformer = build_transformer(config.input_transform)
    values = {name: float(i + 1) for i, name in enumerate(config.input.variables)}
    values["CAMR:IN20:186:XRMS"], values["CAMR:IN20:186:YRMS"] = 3.0, 4.0
    transformer.handle_many({name: {"value": value} for name, value in values.items()})
    inputs = transformer.take()
    assert inputs["distgen:r_dist:sigma_xy:value"] == 5.0
    assert inputs["distgen:t_dist:length:value"] == 1.8550514181818183
    assert inputs["QE04:b1_gradient"] == values["QUAD:IN20:525:BACT"]
    assert len(inputs) == 16
    output = build_transformer(config.output_transform)
    output.handle_many({"sigma_x": 6.0, "sigma_y": 8.0, "sigma_z": 1.0, "norm_emit_x": 2.0, "norm_emit_y": 3.0})
    outputs = output.take()
    assert outputs["LUME:MLFLOW:EXAMPLE:COMBINED"] == 10.0 and outputs["LUME:MLFLOW:SIGMA_X"] == 6.0
    assert set(outputs) == set(config.output.variables)


def test_seed_example3_loads_with_the_transformer_typo():
    config = load_config(CONFIGS / "seed_example3.yaml")
    assert raw("seed_example3.yaml")["input_data_to_model"]["type"] == "CAImageTransfomer"
    assert config.input_transform.type == "CAImageTransformer"
    assert config.output_transform.type == "CompoundTransformer"
    assert config.model_outputs["y_img"].type == "image"
    image = config.output.variables["LUME:MLFLOW:TEST_IMAGE"]
    assert image.type == "image" and (image.image_size.x, image.image_size.y) == (640, 480)
    assert config.output.method == "p4p_server"
    transformer = build_transformer(config.input_transform)
    transformer.handle_many({"CAMR:IN20:186:IMAGE": np.arange(12), "CAMR:IN20:186:N_OF_COL": 4,
                             "CAMR:IN20:186:N_OF_ROW": 3})
    assert transformer.take()["image"].shape == (3, 4)


def test_interface_spec_dumps_to_the_plain_config_interfaces_take():
    config = load_config(CONFIGS / "polylithic_modules.yaml")
    settings = config.input.model_dump(exclude_none=True, exclude={"method"})
    assert settings == {
        "EPICS_PVA_NAME_SERVERS": "localhost:5075",
        "variables": {
            "DEMO:IN:A": {"name": "DEMO:IN:A", "proto": "pva", "type": "scalar"},
            "DEMO:IN:B": {"name": "DEMO:IN:B", "proto": "pva", "type": "scalar"},
        },
    }


# ------------------------------------------------------------------------------ poly-lithic modules


def test_modules_form_with_one_shared_interface_is_split_by_direction():
    config = load_config(CONFIGS / "polylithic_modules.yaml")
    assert config.source_format == "modules" and config.shared_interface
    assert config.deployment.rate == 5.0
    assert config.input.method == config.output.method == "p4p_server"
    assert list(config.input.variables) == ["DEMO:IN:A", "DEMO:IN:B"]  # never the PVs we write
    assert list(config.output.variables) == ["DEMO:OUT:SUM", "DEMO:OUT:NORM"]
    assert config.module_names.input == config.module_names.output == "pv_server"
    assert config.model_module.type == "model.SimpleModel"
    assert config.model_module.config["args"]["model_factory_class"] == "ModelFactory"
    assert list(config.model_outputs) == ["total", "norm"]
    transformer = build_transformer(config.input_transform)
    transformer.handle_many({"DEMO:IN:A": 1.0, "DEMO:IN:B": 3.0})
    assert transformer.take() == {"x": 12.0, "y": 2.0}


def test_modules_form_with_separate_interfaces_and_compound_output():
    config = load_config(CONFIGS / "polylithic_modules_split.yaml")
    assert not config.shared_interface
    assert (config.input.method, config.output.method) == ("k2eg", "p4p_server")
    assert config.input_transform.type == "CAImageTransformer"
    assert config.output_transform.type == "CompoundTransformer"
    assert config.module_names.model_dump() == {"input": "camera", "input_transform": "image_transformer",
                                                "model": "model", "output_transform": "output_transformer",
                                                "output": "results"}


@pytest.mark.parametrize("name", ["seed_example1.yaml", "seed_example2.yaml", "seed_example3.yaml",
                                  "polylithic_modules.yaml", "polylithic_modules_split.yaml"])
def test_modules_view_round_trips_to_the_same_pipeline(name):
    config = load_config(CONFIGS / name)
    modules = config.modules
    assert list(modules) == list(dict.fromkeys(config.module_names.model_dump().values()))
    rebuilt = load_config({"deployment": config.deployment.model_dump(),
                           "modules": {key: module.model_dump() for key, module in modules.items()}})
    for field in ("deployment", "input", "input_transform", "model_outputs", "output_transform", "output"):
        assert getattr(rebuilt, field) == getattr(config, field), field


def test_graph_that_is_not_one_chain_is_refused_naming_the_module():
    assert problems_of(CONFIGS / "bad_graph_branch.yaml") == [
        "modules.model.sub: linked to 2 modules (in_1, in_2); the runtime supports a single chain "
        "interface -> transformer -> model -> transformer -> interface"
    ]
    assert problems_of(CONFIGS / "bad_graph_interface.yaml") == [
        "modules.model.sub: linked to 'api' (interface.fastapi_server) but the chain interface -> transformer -> "
        "model -> transformer -> interface needs a transformer here; add a transformer "
        "(e.g. transformer.PassThroughTransformer) between them"
    ]


def graph() -> dict:
    return raw("polylithic_modules_split.yaml")


def test_graph_stray_module_and_unsupported_interface():
    config = graph()
    config["modules"]["logger"] = {"name": "logger", "type": "transformer.PassThroughTransformer",
                                   "pub": "nowhere", "sub": "nothing", "config": {"variables": {"a": "b"}}}
    assert problems_of(config) == [
        "modules.logger: not part of the chain interface -> transformer -> model -> transformer -> interface "
        "(the runtime runs one chain); remove it or fix its pub/sub"
    ]
    config = graph()
    config["modules"]["results"]["type"] = "interface.fastapi_server"
    assert problems_of(config) == [
        "modules.results.type: interface 'interface.fastapi_server' is not supported by this runtime; "
        "expected one of interface.p4p, interface.p4p_server, interface.k2eg"
    ]


def test_graph_module_errors():
    config = graph()
    del config["modules"]["model"]
    assert problems_of(config) == ["modules: the runtime needs exactly one module of type model.<Name>; found none"]
    config = graph()
    config["modules"]["camera"]["type"] = "camera"
    assert problems_of(config) == [
        "modules.camera.type: expected 'interface.<p4p|p4p_server|k2eg>', 'transformer.<Type>' or "
        "'model.<Name>', got 'camera'"
    ]
    config = graph()
    config["modules"]["output_transformer"]["pub"] = "elsewhere"
    assert problems_of(config) == [
        "modules.output_transformer.pub: no module subscribes to ['elsewhere']; the runtime needs the chain "
        "interface -> transformer -> model -> transformer -> interface, so link a interface here"
    ]
    config = graph()
    config["modules"]["output_transformer"]["type"] = "transformer.Unknown"
    assert problems_of(config)[0].startswith(
        "modules.output_transformer.type: unknown transformer type 'transformer.Unknown'; expected one of")


def test_graph_cross_references_use_module_paths():
    config = graph()
    config["modules"]["output_transformer"]["config"]["transformers"]["scalars"]["config"]["variables"]["DEMO:IMG:MIN"] = {
        "formula": "y_max * 0"}
    assert problems_of(config) == [
        "modules.output_transformer.config.transformers.scalars.config.variables.DEMO:IMG:MIN: no PV named "
        "DEMO:IMG:MIN in modules.results.config.variables; add it there"
    ]


def test_modules_and_legacy_keys_cannot_be_mixed():
    config = graph()
    config["input_data"] = raw("seed_example1.yaml")["input_data"]
    assert problems_of(config) == [
        "modules: cannot be combined with the legacy sections (input_data); use either modules: or "
        "input_data/input_data_to_model/.../output_data_to"
    ]


# ------------------------------------------------------------------------------ legacy errors


def test_unknown_methods_list_the_allowed_values():
    assert problems_of(CONFIGS / "bad_unknown_methods.yaml") == [
        "input_data.get_method: unknown method 'epics'; expected one of p4p, p4p_server, k2eg",
        "output_data_to.put_method: unknown method 'p4p_sever' (did you mean p4p_server?); "
        "expected one of p4p, p4p_server, k2eg",
    ]


def test_output_target_missing_from_output_pvs():
    assert problems_of(CONFIGS / "bad_missing_output_pv.yaml") == [
        "output_model_to_data.config.variables.PV:Z: no PV named PV:Z in output_data_to.config.variables; "
        "add it there"
    ]


def test_input_formula_symbol_must_be_an_input_pv():
    assert problems_of(CONFIGS / "bad_input_symbol.yaml") == [
        "input_data_to_model.config.variables.x.formula: 'PV:C' is not a PV in input_data.config.variables; "
        "add it there (or fix the name)"
    ]


def test_every_problem_is_reported_at_once():
    assert problems_of(CONFIGS / "bad_many_problems.yaml") == [
        "deployment.rate: input should be greater than 0 (got -2); give the maximum evaluations per second "
        "(a number > 0), or 0 / omit it for no limit",
        "input_data.config.variables.PV:A.proto: p4p supports pva only, got 'ca'; use proto: pva, or "
        "get_method/put_method k2eg for Channel Access PVs",
        "input_data.config.variables.PV:B.type: got 'picture'; expected one of 'scalar', 'image', 'array' "
        "or 'waveform'",
        "input_data_to_model.type: unknown transformer type 'SimpleTransfomer' (did you mean SimpleTransformer?); "
        "expected one of SimpleTransformer, ReverseTransformer, CAImageTransformer, PassThroughTransformer, "
        "CompoundTransformer (alias CAImageTransfomer)",
        "output_model_to_data.config.variables.PV:Y.formula: formula \"y ^ 2\": '^' at column 3 is not "
        "supported; use '**' for powers",
    ]  # PV:W's undeclared symbol is reported once its transformer is valid (cross-checks need valid parts)
    fixed = raw("bad_many_problems.yaml")
    fixed["output_model_to_data"]["config"]["variables"]["PV:Y"]["formula"] = "y ** 2"
    assert problems_of(fixed)[-1] == (
        "output_model_to_data.config.variables.PV:W.formula: symbol 'w' is neither listed in "
        "output_model_to_data.config.symbols nor a model output in outputs_model.config.variables; "
        "add it to output_model_to_data.config.symbols"
    )


def test_output_formula_symbols_may_be_declared_or_model_outputs():
    config = raw("seed_example1.yaml")
    config["output_model_to_data"]["config"]["symbols"] = []
    assert load_config(config).output_transform.type == "SimpleTransformer"  # y is a declared model output
    del config["outputs_model"]
    assert problems_of(config) == [
        "output_model_to_data.config.variables.LUME:MLFLOW:TEST_G.formula: symbol 'y' is neither listed in "
        "output_model_to_data.config.symbols nor a model output in outputs_model.config.variables; "
        "add it to output_model_to_data.config.symbols"
    ]


def test_pass_through_source_must_be_a_declared_model_output():
    config = raw("seed_example3.yaml")
    config["output_model_to_data"]["config"]["transformers"]["t_2"]["config"]["variables"]["LUME:MLFLOW:TEST_IMAGE"] = "y_image"
    assert problems_of(config) == [
        "output_model_to_data.config.transformers.t_2.config.variables.LUME:MLFLOW:TEST_IMAGE: 'y_image' is not "
        "a model output in outputs_model.config.variables; add it there"
    ]


def test_missing_sections_and_fields():
    config = raw("seed_example1.yaml")
    del config["output_data_to"]
    del config["input_data"]["get_method"]
    config["input_data_to_model"]["config"]["variables"]["x1"] = {"fromula": "LUME:MLFLOW:TEST_A"}
    assert problems_of(config) == [
        "output_data_to: required section is missing; add output_data_to: "
        "{put_method: p4p|p4p_server|k2eg, config: {variables: {...}}}",
        "input_data.get_method: required but missing; expected one of p4p, p4p_server, k2eg",
        'input_data_to_model.config.variables.x1.formula: required but missing; add formula: '
        '"<expression over PV names>"',
    ]


def test_wrong_shapes_are_explained():
    config = raw("seed_example1.yaml")
    config["input_data"]["config"] = ["LUME:MLFLOW:TEST_A"]
    config["output_model_to_data"]["config"]["symbols"] = "y"
    config["output_data_to"]["config"]["variables"] = {}
    assert problems_of(config) == [
        "input_data.config: expected a mapping, got ['LUME:MLFLOW:TEST_A']; add config: "
        "{variables: {PV:NAME: {proto: pva, name: PV:NAME}}}",
        "output_model_to_data.config.symbols: expected a list, got 'y'",
        "output_data_to.config.variables: must not be empty; list at least one entry",
    ]


def test_malicious_formula_in_a_config_is_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    config = raw("seed_example1.yaml")
    config["input_data_to_model"]["config"]["variables"]["x1"]["formula"] = f"__import__('os').system('touch {marker}')"
    problems = problems_of(config)
    assert len(problems) == 1 and problems[0].startswith("input_data_to_model.config.variables.x1.formula: formula")
    assert "names starting with '__' are not allowed" in problems[0]
    assert not marker.exists()


def test_unknown_top_level_and_section_keys_only_warn(caplog):
    config = raw("seed_example1.yaml")
    config["owner"] = "controls"
    config["input_data"]["get_methods"] = "k2eg"
    with caplog.at_level(logging.WARNING, logger="model_deploy.runtime.config"):
        load_config(config)
    assert "ignoring unknown key 'owner'" in caplog.text
    assert "input_data: ignoring unknown key 'get_methods' (did you mean get_method?)" in caplog.text


def test_reading_a_pv_the_pipeline_writes_warns_about_the_loop(caplog):
    config = raw("seed_example1.yaml")
    config["output_data_to"]["config"]["variables"]["LUME:MLFLOW:TEST_G"]["name"] = "LUME:MLFLOW:TEST_A"
    with caplog.at_level(logging.WARNING, logger="model_deploy.runtime.config"):
        load_config(config)
    assert ("input_data.config.variables.LUME:MLFLOW:TEST_A: PV LUME:MLFLOW:TEST_A is both read and written by "
            "this pipeline") in caplog.text


def test_rate_is_optional_and_zero_means_unlimited():
    config = raw("seed_example1.yaml")
    config["deployment"]["rate"] = 0
    assert load_config(config).deployment.rate is None
    config["deployment"]["rate"] = 2.5
    assert load_config(config).deployment.rate == 2.5
    config["deployment"]["extra_setting"] = "kept"
    assert load_config(config).deployment.model_dump()["extra_setting"] == "kept"
    config["deployment"]["rate"] = "fast"
    assert problems_of(config)[0].startswith("deployment.rate: input should be a valid number")


def test_p4p_interfaces_accept_pva_only():
    config = raw("seed_example1.yaml")
    config["input_data"]["get_method"] = "p4p"
    config["input_data"]["config"]["variables"]["LUME:MLFLOW:TEST_B"]["proto"] = "ca"
    assert problems_of(config) == [
        "input_data.config.variables.LUME:MLFLOW:TEST_B.proto: p4p supports pva only, got 'ca'; use proto: pva, "
        "or get_method/put_method k2eg for Channel Access PVs"
    ]


# ------------------------------------------------------------------------------ sources


def test_sources_path_text_and_dict_agree():
    path = CONFIGS / "seed_example1.yaml"
    text = path.read_text()
    from_path, from_str_path, from_text, from_dict = (
        load_config(path), load_config(str(path)), load_config(text), load_config(yaml.safe_load(text)))
    assert from_path == from_str_path == from_text == from_dict


def test_source_errors():
    assert problems_of(CONFIGS / "bad_yaml_syntax.yaml") == [
        f"{CONFIGS / 'bad_yaml_syntax.yaml'}: YAML syntax error at line 7, column 6: expected <block end>, "
        "but found '<block mapping start>'; fix the indentation/quoting there"
    ]
    assert problems_of(CONFIGS / "missing.yaml") == [
        f"{CONFIGS / 'missing.yaml'}: file not found; pass the path of the pipeline YAML"]
    assert problems_of("no/such/pipeline.conf") == ["no/such/pipeline.conf: file not found; pass the path of the "
                                                    "pipeline YAML"]
    assert problems_of("- just\n- a list\n") == ["config: expected a YAML mapping with the pipeline sections, "
                                                 "got ['just', 'a list']"]
    assert problems_of({"deployment": {"type": "continuous"}})[0].startswith("config: no pipeline found")


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "pwned"
    text = f"input_data: !!python/object/apply:os.system ['touch {marker}']\n"
    problems = problems_of(text)
    assert "YAML syntax error" in problems[0] and "could not determine a constructor" in problems[0]
    assert not marker.exists()


def test_duplicate_yaml_keys_warn(caplog):
    text = (CONFIGS / "seed_example1.yaml").read_text().replace(
        "      x1: \n", "      x1: \n        formula: \"LUME:MLFLOW:TEST_B\"\n      x1:\n", 1)
    with caplog.at_level(logging.WARNING, logger="model_deploy.runtime.config"):
        config = load_config(text)
    assert "duplicate key 'x1'" in caplog.text
    assert config.input_transform.config.variables["x1"].formula == "LUME:MLFLOW:TEST_A"  # the last one wins


# ------------------------------------------------------------------------------ checksum


def test_checksum_ignores_form_and_key_order_but_not_content():
    path = CONFIGS / "seed_example2.yaml"
    original = raw("seed_example2.yaml")
    reordered = dict(reversed(list(copy.deepcopy(original).items())))
    reordered["input_data"]["config"]["variables"] = dict(reversed(list(original["input_data"]["config"]["variables"].items())))
    checksum = config_checksum(path)
    assert len(checksum) == 64 and checksum == config_checksum(load_config(path)) == config_checksum(reordered)
    changed = copy.deepcopy(original)
    changed["output_model_to_data"]["config"]["variables"]["LUME:MLFLOW:EXAMPLE:COMBINED"]["formula"] = "sigma_x + sigma_y"
    assert config_checksum(changed) != checksum
    changed = copy.deepcopy(original)
    changed["deployment"]["rate"] = 1
    assert config_checksum(changed) != checksum
