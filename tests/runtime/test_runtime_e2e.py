"""End to end: the installed `model-manager` console script in a subprocess, a model registered in a
real MLflow server (its pv_mappings.yaml comes from MLflow), inputs on a real p4p server, outputs
read back through a p4p client, /metrics and /readyz scraped over HTTP, SIGTERM/SIGINT handling.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from p4p.client.thread import Context

pytestmark = [pytest.mark.p4p, pytest.mark.mlflow]

MODEL_MANAGER = str(Path(sys.executable).with_name("model-manager"))
STARTUP_TIMEOUT = 120.0  # imports torch/mlflow/lume and downloads the model: slow on a busy 2-core CI box


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen | None = None,
               interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"model-manager exited with {proc.returncode} while waiting for {what}:\n"
                                 + read_stderr(proc))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_stderr(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate(timeout=10)
    return err


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def sample(metrics_text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", metrics_text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


class Runtime:
    """A `model-manager` subprocess plus what the test needs to talk to it."""

    def __init__(self, argv: list[str], env: dict[str, str], metrics_port: int, server_port: int):
        self.metrics_url = f"http://127.0.0.1:{metrics_port}"
        self.server_port = server_port
        self.proc = subprocess.Popen([MODEL_MANAGER, *argv, "--metrics-port", str(metrics_port),
                                      "--metrics-host", "127.0.0.1"],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.client: Context | None = None

    def wait_ready(self) -> None:
        wait_until(lambda: http_get(self.metrics_url + "/readyz")[0] == 200, STARTUP_TIMEOUT, "/readyz 200",
                   self.proc)

    def output_client(self) -> Context:
        """A client that finds the PVs the runtime hosts (p4p_server) over TCP."""
        conf = {"EPICS_PVA_NAME_SERVERS": f"127.0.0.1:{self.server_port}", "EPICS_PVA_ADDR_LIST": "",
                "EPICS_PVA_AUTO_ADDR_LIST": "NO"}
        self.client = Context("pva", conf=conf, useenv=False)
        return self.client

    def metrics(self) -> str:
        status, text = http_get(self.metrics_url + "/metrics")
        assert status == 200
        return text

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> tuple[int, float, str]:
        started = time.monotonic()
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, time.monotonic() - started, err

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture
def start_runtime(tmp_path, pva_env, registered_demo_model):
    """Start `model-manager ARGV` with EPICS_PVA_* pointing at the given test server, MLflow at the
    session server, an empty model cache and the runtime's own p4p_server on known loopback ports."""
    runtimes: list[Runtime] = []

    def start(server, *argv: str) -> Runtime:
        server_port = free_port()
        env = pva_env(server)
        env.update({
            "MLFLOW_TRACKING_URI": registered_demo_model.tracking_uri,
            "MODEL_CACHE_DIR": str(tmp_path / f"cache-{len(runtimes)}"),
            "EPICS_PVAS_SERVER_PORT": str(server_port),
            "EPICS_PVAS_BROADCAST_PORT": str(free_port(socket.SOCK_DGRAM)),
            "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        })
        runtime = Runtime(list(argv), env, free_port(), server_port)
        runtimes.append(runtime)
        return runtime

    yield start
    for runtime in runtimes:
        runtime.close()


# ----------------------------------------------------------------------------- (c)
def test_registered_model_by_name_and_version_end_to_end(p4p_pvs, registered_demo_model, start_runtime):
    demo = registered_demo_model
    server = p4p_pvs({"DEMO:X1": 1.0, "DEMO:X2": 2.0})
    runtime = start_runtime(server, "-n", demo.name, "-v", "1", "-p")  # no -c: pv_mappings.yaml from MLflow
    runtime.wait_ready()
    client = runtime.output_client()

    wait_until(lambda: client.get("DEMO:Y", timeout=2) == demo.expected_y("1", 1.0, 2.0), 20, "first output")
    for x1, x2 in [(5.0, 1.0), (-3.0, 0.5)]:
        server.post("DEMO:X1", x1)
        server.post("DEMO:X2", x2)
        expected = demo.expected_y("1", x1, x2)
        wait_until(lambda: client.get("DEMO:Y", timeout=2) == expected, 20, f"DEMO:Y == {expected}")

    text = runtime.metrics()
    assert sample(text, "model_deploy_runtime_evaluations_total") >= 3
    assert sample(text, "model_deploy_runtime_updates_received_total") >= 4
    assert sample(text, "model_deploy_runtime_inputs_connected") == 2
    assert sample(text, 'model_deploy_runtime_errors_total{stage="model"}') == 0
    assert sample(text, "model_deploy_runtime_last_output_timestamp_seconds") > time.time() - 120
    assert re.search(r'model_deploy_runtime_model_info\{name="demo-linear",.*version="1"\} 1\.0', text)
    status, body = http_get(runtime.metrics_url + "/readyz")
    assert status == 200 and json.loads(body)["ok"] is True
    assert http_get(runtime.metrics_url + "/healthz")[0] == 200

    code, took, err = runtime.terminate(signal.SIGTERM)
    assert code == 0, err
    assert took < 10
    assert "resolved model demo-linear version 1" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- (d)
def test_without_publish_nothing_is_written_and_alias_is_resolved(p4p_pvs, registered_demo_model, start_runtime,
                                                                 tmp_path):
    demo = registered_demo_model
    server = p4p_pvs({"DEMO:X1": 1.0, "DEMO:X2": 2.0, "DEMO:Y": -42.0})
    # Same pipeline as the model's pv_mappings.yaml, but writing into the test server's DEMO:Y through
    # the p4p client: a write, if one happened, would be visible there.
    config = yaml.safe_load(yaml.safe_dump(demo.pv_mappings))
    config["output_data_to"] = {"put_method": "p4p", "config": {"variables": {
        "DEMO:Y": {"name": "DEMO:Y", "proto": "pva"}}}}
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config))
    runtime = start_runtime(server, "-n", demo.name, "-v", demo.alias, "-c", str(config_path))
    runtime.wait_ready()

    server.post("DEMO:X1", 7.0)
    wait_until(lambda: sample(runtime.metrics(), "model_deploy_runtime_evaluations_total") >= 2, 20,
               "evaluations")
    time.sleep(0.3)  # a stray write would have landed by now
    assert server.get("DEMO:Y") == -42.0

    code, _, err = runtime.terminate(signal.SIGINT)
    assert code == 0, err
    assert f"resolved model demo-linear version {demo.alias_version}" in err
    assert "dry run (no --publish)" in err


def test_sigterm_while_the_model_is_loading_exits_0(p4p_pvs, registered_demo_model, start_runtime):
    server = p4p_pvs({"DEMO:X1": 1.0, "DEMO:X2": 2.0})
    runtime = start_runtime(server, "-n", registered_demo_model.name, "-v", "1", "-p")
    # the handlers are installed before the model load starts; wait for its log line
    deadline = time.monotonic() + STARTUP_TIMEOUT
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = runtime.proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if "loading model" in line:
            break
    assert any("loading model" in line for line in seen), "".join(seen)
    code, took, err = runtime.terminate(signal.SIGTERM)
    assert code == 0, "".join(seen) + err
    assert took < 10
    assert "before the pipeline was running" in err
    assert "Traceback" not in err
