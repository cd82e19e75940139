"""`model-manager deploy | status | terminate`, MLflow route, against a real MLflow server."""

from __future__ import annotations

import argparse
import json

import pytest
from mlflow.tracking import MlflowClient

from model_deploy import deployctl

pytestmark = pytest.mark.mlflow


@pytest.fixture(autouse=True)
def _restore_mlflow_http_env(monkeypatch):
    # The CLI tunes MLflow's HTTP retries for itself; keep that from leaking into other tests.
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(key, "")  # records the original value, so teardown restores it
        monkeypatch.delenv(key)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="model-manager")
    subparsers = parser.add_subparsers(dest="command", required=True)
    deployctl.add_subcommands(subparsers)
    return deployctl.run(parser.parse_args(argv))


@pytest.fixture
def registered_model(mlflow_server, request):
    client = MlflowClient(mlflow_server.uri)
    name = f"deployctl-{request.node.name}"[:60]
    client.create_registered_model(name)
    return client, name


def test_deploy_sets_the_tag_the_operator_polls(registered_model, capsys):
    client, name = registered_model
    client.set_registered_model_tag(name, "deployment_terminate", "true")  # a previous teardown

    assert run(["deploy", "-n", name, "-o", "json"]) == 0

    tags = client.get_registered_model(name).tags
    assert tags["deployment_type"] == "prod"
    assert "deployment_terminate" not in tags  # otherwise the operator would tear it down again
    assert json.loads(capsys.readouterr().out)["deployment_type"] == "prod"


def test_terminate_and_status(registered_model, capsys):
    client, name = registered_model
    client.set_registered_model_tag(name, "deployment_type", "prod")
    client.set_registered_model_tag(name, "deployment_status", "running")

    assert run(["status", "-n", name, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["deployment_status"] == "running"

    assert run(["terminate", "-n", name]) == 0
    assert client.get_registered_model(name).tags["deployment_terminate"] == "true"


def test_wait_times_out_with_failure_when_nothing_deploys(registered_model, capsys):
    _, name = registered_model
    # No operator runs here: the status never reaches `running`, so --wait must report failure.
    assert run(["deploy", "-n", name, "--wait", "1"]) == 1


def test_unknown_model_is_a_clear_error(mlflow_server, capsys):
    assert run(["status", "-n", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "registered model 'no-such-model' does not exist" in err
    assert "Traceback" not in err


def test_mlflow_route_refuses_version_pins(registered_model, capsys):
    _, name = registered_model
    assert run(["deploy", "-n", name, "-v", "3"]) == 1
    assert "--via kubernetes" in capsys.readouterr().err


def test_unreachable_mlflow_is_a_clear_error(capsys):
    assert run(["status", "-n", "x", "--tracking-uri", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9" in err and "Traceback" not in err
