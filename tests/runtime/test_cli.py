"""`model-manager` CLI: argument forms, exit codes, clear errors, --once, env files.

Most tests call ``main(argv)`` in-process (imports are paid once); the subprocess tests in
test_runtime_e2e.py cover signals and the installed console script.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_deploy.runtime import cli
from tests.fixtures.demo_models import write_local_factory


def dump(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def linear_config(name_servers: str, *, output: str = "p4p", timeout: float | None = None) -> dict[str, Any]:
    inputs: dict[str, Any] = {"EPICS_PVA_NAME_SERVERS": name_servers,
                              "variables": {pv: {"name": pv, "proto": "pva"} for pv in ("IN:X1", "IN:X2")}}
    if timeout:
        inputs["timeout"] = timeout
    out: dict[str, Any] = {"variables": {"OUT:Y": {"name": "OUT:Y", "proto": "pva"}}}
    if output == "p4p":
        out["EPICS_PVA_NAME_SERVERS"] = name_servers
    return {
        "deployment": {"type": "continuous"},
        "input_data": {"get_method": "p4p", "config": inputs},
        "input_data_to_model": {"type": "SimpleTransformer", "config": {
            "symbols": ["IN:X1", "IN:X2"], "variables": {"x1": {"formula": "IN:X1"}, "x2": {"formula": "IN:X2"}}}},
        "outputs_model": {"config": {"variables": {"y": {"type": "scalar"}}}},
        "output_model_to_data": {"type": "SimpleTransformer", "config": {
            "symbols": ["y"], "variables": {"OUT:Y": {"formula": "y"}}}},
        "output_data_to": {"put_method": output, "config": out},
    }


@pytest.fixture
def factory(tmp_path) -> Path:
    return write_local_factory(tmp_path / "model", a=2.0, b=-1.0)


@pytest.fixture(autouse=True)
def restore_logging():
    """main() installs its own root handler; remove it so other tests' log capture is unaffected."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if getattr(handler, "_model_manager", False):
            root.removeHandler(handler)
    root.setLevel(level)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "model-manager: error" in line or line.startswith("  ")]


# ----------------------------------------------------------------------------- argument forms
def test_bare_flags_mean_run():
    parser = cli.build_parser()
    bare = parser.parse_args(cli.normalise_argv(["-n", "m", "-v", "3", "-p", "--metrics-port", "0"]))
    explicit = parser.parse_args(cli.normalise_argv(["run", "-n", "m", "-v", "3", "-p", "--metrics-port", "0"]))
    assert vars(bare) == vars(explicit)
    assert (bare.command, bare.model_name, bare.model_version, bare.publish, bare.metrics_port) == (
        "run", "m", "3", True, 0)


def test_seed_long_flags_and_defaults():
    args = cli.build_parser().parse_args(cli.normalise_argv(
        ["--model_name", "m", "--model_version", "champion", "--env", "e.json", "--configs", "c.yaml",
         "--publish", "--debug"]))
    assert (args.model_name, args.model_version, args.env_file, args.config, args.publish, args.debug) == (
        "m", "champion", "e.json", "c.yaml", True, True)
    assert args.metrics_port == cli.DEFAULT_METRICS_PORT and args.log_format == "text" and not args.once


def test_top_level_help_lists_subcommands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "run" in out and "Bare flags" in out
    assert {"deploy", "status", "terminate"} <= set(out.split())


def test_deployctl_subcommands_are_routed_not_treated_as_run():
    from model_deploy import deployctl

    parser = cli.build_parser()
    argv = cli.normalise_argv(["status", "-n", "m"], cli.subcommand_names(parser))
    assert argv == ["status", "-n", "m"]
    args = parser.parse_args(argv)
    assert args.command == "status" and args.runner is deployctl.run


@pytest.mark.parametrize("argv, message", [
    (["-n", "m"], "-v/--model_version is required with -n m"),
    (["-l", "somewhere"], "-l/--local needs a pipeline config: add -c pipeline.yaml"),
    ([], "no model given"),
    (["-n", "m", "-v", "1", "-l", "x", "-c", "c.yaml"], "alternatives"),
    (["-n", "m", "-v", "1", "--metrics-port", "70000"], "--metrics-port 70000"),
    (["-n", "m", "-v", "1", "--log-format", "xml"], "invalid choice: 'xml'"),
])
def test_usage_errors_exit_2_with_a_clear_message(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == cli.EXIT_CONFIG
    assert message in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- (f) bad config
def test_bad_config_exits_2_naming_the_field(capsys, tmp_path, factory):
    config = linear_config("127.0.0.1:5075")
    config["input_data"]["get_method"] = "carrier-pigeon"
    config["output_model_to_data"]["config"]["variables"] = {"OUT:Z": {"formula": "y"}}
    path = dump(tmp_path / "bad.yaml", config)
    code, _, err = run(capsys, "-l", str(factory), "-c", str(path), "--metrics-port", "0")
    assert code == cli.EXIT_CONFIG
    assert "input_data.get_method" in err and "p4p_server" in err  # names the field and the choices
    assert "OUT:Z" in err  # every problem is listed, not only the first
    assert "Traceback" not in err


def test_yaml_syntax_error_and_missing_file_exit_2(capsys, tmp_path, factory):
    broken = dump(tmp_path / "broken.yaml", "input_data:\n  get_method: p4p\n   config: [\n")
    code, _, err = run(capsys, "-l", str(factory), "-c", str(broken), "--metrics-port", "0")
    assert code == cli.EXIT_CONFIG and "line" in err and "Traceback" not in err
    code, _, err = run(capsys, "-l", str(factory), "-c", str(tmp_path / "nope.yaml"), "--metrics-port", "0")
    assert code == cli.EXIT_CONFIG and "nope.yaml: file not found" in err


def test_invalid_interface_settings_exit_2(capsys, tmp_path, factory):
    config = linear_config("not a host:port list:99999")
    path = dump(tmp_path / "c.yaml", config)
    code, _, err = run(capsys, "-l", str(factory), "-c", str(path), "--once")
    assert code == cli.EXIT_CONFIG
    assert "EPICS_PVA_NAME_SERVERS" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- env file
def test_env_file_errors_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "-e", str(tmp_path / "missing.json"), "-n", "m", "-v", "1")
    assert code == cli.EXIT_CONFIG and "missing.json: file not found" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"A": 1,,}')
    code, _, err = run(capsys, "-e", str(bad), "-n", "m", "-v", "1")
    assert code == cli.EXIT_CONFIG and "not valid JSON" in err
    bad.write_text('["A"]')
    code, _, err = run(capsys, "-e", str(bad), "-n", "m", "-v", "1")
    assert code == cli.EXIT_CONFIG and "expected a JSON object" in err


# ----------------------------------------------------------------------------- model errors
@pytest.mark.mlflow
def test_unknown_registered_model_exits_3(capsys, mlflow_server, model_cache_dir):
    code, _, err = run(capsys, "-n", "no-such-model", "-v", "1", "--metrics-port", "0")
    assert code == cli.EXIT_MODEL
    assert "no-such-model" in err and "Traceback" not in err


@pytest.mark.mlflow
def test_unknown_version_exits_3_and_lists_versions(capsys, registered_demo_model, model_cache_dir):
    code, _, err = run(capsys, "-n", registered_demo_model.name, "-v", "99", "--metrics-port", "0")
    assert code == cli.EXIT_MODEL
    assert "99" in err and "Traceback" not in err


def test_mlflow_down_exits_3_naming_the_uri(capsys, tmp_path, monkeypatch, model_cache_dir):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"MLFLOW_TRACKING_URI": dead}))  # -e is applied before the model load
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # ...and wins over the environment
    code, _, err = run(capsys, "-e", str(env_file), "-n", "m", "-v", "1", "--metrics-port", "0")
    assert code == cli.EXIT_MODEL
    assert dead in err and "Traceback" not in err


def test_broken_local_model_traceback_only_with_debug(capsys, tmp_path):
    (tmp_path / "model_factory.py").write_text("class ModelFactory:\n    def get_model(self):\n"
                                               "        raise RuntimeError('weights file corrupt')\n")
    config = dump(tmp_path / "c.yaml", linear_config("127.0.0.1:5075"))
    code, _, err = run(capsys, "-l", str(tmp_path), "-c", str(config), "--once")
    assert code == cli.EXIT_MODEL and "weights file corrupt" in err and "Traceback" not in err
    code, _, err = run(capsys, "-l", str(tmp_path), "-c", str(config), "--once", "-d")
    assert code == cli.EXIT_MODEL and "Traceback" in err


# ----------------------------------------------------------------------------- (g) --once
@pytest.mark.p4p
def test_once_publishes_one_evaluation_and_prints_it(capsys, tmp_path, p4p_pvs, factory):
    server = p4p_pvs({"IN:X1": 4.0, "IN:X2": 1.5, "OUT:Y": 0.0})
    config = dump(tmp_path / "c.yaml", linear_config(server.name_servers))
    code, out, err = run(capsys, "-l", str(factory), "-c", str(config), "--once", "-p")
    assert code == cli.EXIT_OK, err
    assert json.loads(out) == {"OUT:Y": 6.5}
    assert server.get("OUT:Y") == 6.5


@pytest.mark.p4p
def test_once_without_publish_writes_nothing(capsys, tmp_path, p4p_pvs, factory):
    server = p4p_pvs({"IN:X1": 4.0, "IN:X2": 1.5, "OUT:Y": -1.0})
    config = dump(tmp_path / "c.yaml", linear_config(server.name_servers))
    code, out, err = run(capsys, "-l", str(factory), "-c", str(config), "--once")
    assert code == cli.EXIT_OK, err
    assert json.loads(out) == {"OUT:Y": 6.5}
    assert server.get("OUT:Y") == -1.0
    assert "nothing was written" in err


@pytest.mark.p4p
def test_once_failure_is_nonzero_with_the_pv_named(capsys, tmp_path, p4p_pvs, factory):
    server = p4p_pvs({"IN:X1": 4.0})  # IN:X2 does not exist
    config = dump(tmp_path / "c.yaml", linear_config(server.name_servers, timeout=0.5))
    code, out, err = run(capsys, "-l", str(factory), "-c", str(config), "--once")
    assert code == cli.EXIT_RUNTIME
    assert out == ""
    assert "stage get" in err and "IN:X2" in err and "Traceback" not in err


@pytest.mark.p4p
def test_once_with_non_finite_input_fails_clearly(capsys, tmp_path, p4p_pvs, factory):
    server = p4p_pvs({"IN:X1": math.nan, "IN:X2": 1.0})
    config = dump(tmp_path / "c.yaml", linear_config(server.name_servers))
    code, _, err = run(capsys, "-l", str(factory), "-c", str(config), "--once")
    assert code == cli.EXIT_RUNTIME and "not finite: x1" in err


@pytest.mark.p4p
@pytest.mark.mlflow
def test_once_with_registered_model_uses_its_pv_mappings_and_env_file(
        capsys, tmp_path, p4p_pvs, registered_demo_model, model_cache_dir, monkeypatch):
    server = p4p_pvs({"DEMO:X1": 3.0, "DEMO:X2": 4.0})
    for key, value in server.env().items():  # the demo config relies on the environment to find PVs
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # wrong: the env file fixes it
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"MLFLOW_TRACKING_URI": registered_demo_model.tracking_uri}))
    code, out, err = run(capsys, "-n", registered_demo_model.name, "-v", "2", "-e", str(env_file), "--once",
                         "--log-format", "json")
    assert code == cli.EXIT_OK, err
    assert json.loads(out) == {"DEMO:Y": registered_demo_model.expected_y("2", 3.0, 4.0)}
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert any("resolved model demo-linear version 2" in r["message"] for r in records)
    assert any("pv_mappings.yaml" in r["message"] for r in records)


def test_metrics_port_in_use_exits_2(capsys, tmp_path, factory):
    config = dump(tmp_path / "c.yaml", linear_config("127.0.0.1:5075"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run(capsys, "-l", str(factory), "-c", str(config), "--metrics-port", str(port),
                           "--metrics-host", "127.0.0.1")
    assert code == cli.EXIT_CONFIG and f"--metrics-port {port}" in err
