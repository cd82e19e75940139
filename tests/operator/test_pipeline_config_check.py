"""The operator checks inline / ConfigMap pipeline configs with the runtime's own loader."""

from __future__ import annotations

from pathlib import Path

import yaml

from model_deploy.operator.crd import parse_spec
from model_deploy.operator.handlers import REASON_INVALID_CONFIG, pipeline_config_problem

SEED_EXAMPLE_1 = Path(__file__).resolve().parents[1] / "runtime" / "configs" / "seed_example1.yaml"


def spec_with(config: dict) -> object:
    return parse_spec({"model": {"mlflow": {"name": "m", "version": "1"}}, "config": config})


def test_valid_inline_config_passes():
    inline = yaml.safe_load(SEED_EXAMPLE_1.read_text())
    assert pipeline_config_problem(spec_with({"inline": inline}), None) is None


def test_inline_config_problem_names_the_field():
    inline = yaml.safe_load(SEED_EXAMPLE_1.read_text())
    inline["input_data"]["get_method"] = "p5p"
    reason, message = pipeline_config_problem(spec_with({"inline": inline}), None)
    assert reason == REASON_INVALID_CONFIG
    assert message.startswith("spec.config.inline: ")
    assert "input_data.get_method" in message and "p4p" in message  # names the field and the allowed values


def test_configmap_text_is_parsed_and_checked():
    spec = spec_with({"configMapRef": {"name": "cfg", "key": "pipeline.yaml"}})
    assert pipeline_config_problem(spec, SEED_EXAMPLE_1.read_text()) is None

    reason, message = pipeline_config_problem(spec, "input_data: [unclosed")
    assert reason == REASON_INVALID_CONFIG and "not valid YAML" in message and "ConfigMap cfg" in message

    reason, message = pipeline_config_problem(spec, "just a string")
    assert reason == REASON_INVALID_CONFIG and "expected a mapping" in message


def test_config_from_mlflow_is_left_to_the_runtime():
    assert pipeline_config_problem(spec_with({}), None) is None
