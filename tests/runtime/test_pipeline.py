"""The runtime pipeline against REAL p4p servers on loopback and real (demo) models.

Inputs are PVs hosted by the test's p4p server (fixture ``p4p_pvs``) and read by the runtime's p4p
client; outputs are hosted by the runtime's own p4p_server (bound to 127.0.0.1, random port) or
written into the test server's PVs, and always read back through a p4p client.
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest

from tests.waiting import wait_until
from p4p.client.thread import Context

from model_deploy.runtime.config import load_config
from model_deploy.runtime.errors import PipelineError
from model_deploy.runtime.interfaces import build_interface
from model_deploy.runtime.metrics import MetricsServer, RuntimeMetrics, readiness_report
from model_deploy.runtime.models import load_model
from model_deploy.runtime.pipeline import Pipeline, ThrottledLog, non_finite_keys
from tests.fixtures.demo_models import write_local_factory

pytestmark = pytest.mark.p4p

# The runtime's own p4p_server: loopback only, random ports (clients find it via its TCP port).
LOOPBACK_SERVER = {
    "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_PVAS_SERVER_PORT": "0",
    "EPICS_PVAS_BROADCAST_PORT": "0",
}


# ----------------------------------------------------------------------------- helpers
def pv_vars(*names: str, **extra: dict[str, Any]) -> dict[str, Any]:
    return {name: {"name": name, "proto": "pva", **extra.get(name.replace(":", "_"), {})} for name in names}


def linear_config(server, *, output: str = "p4p_server", rate: float | None = None,
                  output_server=None) -> dict[str, Any]:
    """Seed-style legacy config: IN:X1, IN:X2 -> x1, x2 -> y -> OUT:Y."""
    if output == "p4p_server":
        out_config = {**LOOPBACK_SERVER, "variables": pv_vars("OUT:Y")}
    else:  # the p4p client, writing into PVs of a (test) server
        out_config = {"EPICS_PVA_NAME_SERVERS": (output_server or server).name_servers,
                      "variables": pv_vars("OUT:Y")}
    deployment: dict[str, Any] = {"type": "continuous"}
    if rate:
        deployment["rate"] = rate
    return {
        "deployment": deployment,
        "input_data": {"get_method": "p4p", "config": {"EPICS_PVA_NAME_SERVERS": server.name_servers,
                                                       "variables": pv_vars("IN:X1", "IN:X2")}},
        "input_data_to_model": {"type": "SimpleTransformer", "config": {
            "symbols": ["IN:X1", "IN:X2"],
            "variables": {"x1": {"formula": "IN:X1"}, "x2": {"formula": "IN:X2"}}}},
        "outputs_model": {"config": {"variables": {"y": {"type": "scalar"}}}},
        "output_model_to_data": {"type": "SimpleTransformer", "config": {
            "symbols": ["y"], "variables": {"OUT:Y": {"formula": "y"}}}},
        "output_data_to": {"put_method": output, "config": out_config},
    }


def client_for_runtime_server(pipeline: Pipeline) -> Context:
    port = pipeline._putter.server_conf()["EPICS_PVAS_SERVER_PORT"]
    conf = {"EPICS_PVA_NAME_SERVERS": f"127.0.0.1:{port}", "EPICS_PVA_ADDR_LIST": "",
            "EPICS_PVA_AUTO_ADDR_LIST": "NO"}
    return Context("pva", conf=conf, useenv=False)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def linear_model(tmp_path):
    """The demo LUMEBaseModel y = 2*x1 - 1*x2, loaded through the real local-factory loader."""
    return load_model(local_path=write_local_factory(tmp_path / "linear", a=2.0, b=-1.0))


@pytest.fixture
def run_pipeline():
    """Start pipelines and always stop them (and their clients) at teardown."""
    started: list[Pipeline] = []
    clients: list[Context] = []

    def start(config: dict[str, Any], model, *, publish: bool = True, metrics: RuntimeMetrics | None = None,
              **kwargs: Any) -> Pipeline:
        pipeline = Pipeline(load_config(config), model, publish=publish, metrics=metrics or RuntimeMetrics(),
                            **kwargs)
        started.append(pipeline)
        pipeline.start()
        return pipeline

    start.clients = clients  # type: ignore[attr-defined]
    yield start
    for pipeline in started:
        pipeline.stop()
    for client in clients:
        client.close()


def runtime_client(run_pipeline, pipeline: Pipeline) -> Context:
    client = client_for_runtime_server(pipeline)
    run_pipeline.clients.append(client)
    return client


def metric(pipeline: Pipeline, name: str, **labels: str) -> float:
    value = pipeline.metrics.sample(name, labels)
    return 0.0 if value is None else value


# ----------------------------------------------------------------------------- (a) exact values
def test_exact_outputs_from_p4p_inputs_to_runtime_hosted_output(p4p_pvs, linear_model, run_pipeline):
    server = p4p_pvs({"IN:X1": 1.0, "IN:X2": 2.0})
    pipeline = run_pipeline(linear_config(server), linear_model)
    client = runtime_client(run_pipeline, pipeline)

    # the initial get_many evaluates as soon as every input has a value: 2*1 - 2 = 0
    wait_until(lambda: pipeline.evaluations >= 1)
    assert client.get("OUT:Y", timeout=5) == 0.0

    for x1, x2 in [(3.0, 1.0), (-2.5, 4.0), (10.0, 0.25)]:
        server.post("IN:X1", x1)
        server.post("IN:X2", x2)
        expected = 2.0 * x1 - 1.0 * x2
        wait_until(lambda: client.get("OUT:Y", timeout=5) == expected)
    assert metric(pipeline, "model_deploy_runtime_evaluations_total") >= 4
    assert metric(pipeline, "model_deploy_runtime_updates_received_total") >= 6
    assert metric(pipeline, "model_deploy_runtime_last_output_timestamp_seconds") > time.time() - 60
    assert pipeline.readiness().ok
    # the hosted output is read-only for clients
    with pytest.raises(Exception, match="read-only"):
        client.put("OUT:Y", 1.0, timeout=5)


# ----------------------------------------------------------------------------- (b) images
IMAGE_FACTORY = textwrap.dedent("""\
    from model_deploy.runtime.demo_models import ImageStatsModel


    class ModelFactory:
        def get_model(self):
            return ImageStatsModel()
    """)


def image_outputs_config(rows: int, cols: int) -> dict[str, Any]:
    """Example 3's output side: compound of scalar stats + the image passed through to p4p_server."""
    stats = {"y_max": "OUT:Y_MAX", "y_min": "OUT:Y_MIN", "y_mean": "OUT:Y_MEAN", "y_std": "OUT:Y_STD"}
    variables = pv_vars(*stats.values(), "OUT:IMAGE")
    variables["OUT:IMAGE"].update(type="image", image_size={"x": cols, "y": rows})
    return {
        "outputs_model": {"config": {"variables": {**{k: {"type": "scalar"} for k in stats},
                                                   "y_img": {"type": "image"}}}},
        "output_model_to_data": {"type": "CompoundTransformer", "config": {"transformers": {
            "t_1": {"type": "SimpleTransformer", "config": {
                "symbols": list(stats), "variables": {pv: {"formula": out} for out, pv in stats.items()}}},
            "t_2": {"type": "PassThroughTransformer", "config": {"variables": {"OUT:IMAGE": "y_img"}}},
        }}},
        "output_data_to": {"put_method": "p4p_server", "config": {**LOOPBACK_SERVER, "variables": variables}},
    }


def expected_image_outputs(image: np.ndarray) -> dict[str, Any]:
    low, high = image.min(), image.max()
    return {"OUT:Y_MAX": high, "OUT:Y_MIN": low, "OUT:Y_MEAN": image.mean(), "OUT:Y_STD": image.std(),
            "OUT:IMAGE": (image - low) / (high - low)}


def assert_image_outputs(client: Context, image: np.ndarray) -> None:
    expected = expected_image_outputs(image)
    got_image = np.asarray(client.get("OUT:IMAGE", timeout=5))
    assert got_image.shape == image.shape  # (rows, cols): non-square, so a transposition would show
    np.testing.assert_allclose(got_image, expected.pop("OUT:IMAGE"))
    for pv, value in expected.items():
        assert client.get(pv, timeout=5) == pytest.approx(value), pv


def test_image_from_flat_array_and_dimensions_example3(p4p_pvs, tmp_path, run_pipeline):
    rows, cols = 3, 5
    image = np.arange(rows * cols, dtype=float).reshape(rows, cols) ** 1.5  # pixel (x, y) at [y, x]
    server = p4p_pvs({"CAM:IMAGE": image.ravel(), "CAM:N_OF_COL": float(cols), "CAM:N_OF_ROW": float(rows)})
    (tmp_path / "model_factory.py").write_text(IMAGE_FACTORY)
    inputs = pv_vars("CAM:IMAGE", "CAM:N_OF_COL", "CAM:N_OF_ROW", CAM_IMAGE={"type": "waveform"})
    config = {
        "deployment": {"type": "continuous"},
        "input_data": {"get_method": "p4p", "config": {"EPICS_PVA_NAME_SERVERS": server.name_servers,
                                                       "variables": inputs}},
        # the seed's typo, as in Example 3
        "input_data_to_model": {"type": "CAImageTransfomer", "config": {"variables": {"image": {
            "img_ch": "CAM:IMAGE", "img_x_ch": "CAM:N_OF_COL", "img_y_ch": "CAM:N_OF_ROW"}}}},
        **image_outputs_config(rows, cols),
    }
    pipeline = run_pipeline(config, load_model(local_path=tmp_path))
    client = runtime_client(run_pipeline, pipeline)
    wait_until(lambda: pipeline.evaluations >= 1)
    assert_image_outputs(client, image)

    # a new frame arrives: every output follows
    frame = np.flipud(image) + 7.0
    server.post("CAM:IMAGE", frame.ravel())
    wait_until(lambda: client.get("OUT:Y_MAX", timeout=5) == pytest.approx(frame.max()))
    wait_until(lambda: np.allclose(np.asarray(client.get("OUT:IMAGE", timeout=5)),
                                   expected_image_outputs(frame)["OUT:IMAGE"]))
    assert_image_outputs(client, frame)


def test_image_from_ntndarray_input(p4p_pvs, tmp_path, run_pipeline):
    rows, cols = 4, 6
    image = np.random.default_rng(1).uniform(0, 100, size=(rows, cols))
    server = p4p_pvs({"CAM:ND": image})
    (tmp_path / "model_factory.py").write_text(IMAGE_FACTORY)
    config = {
        "input_data": {"get_method": "p4p", "config": {
            "EPICS_PVA_NAME_SERVERS": server.name_servers,
            "variables": pv_vars("CAM:ND", CAM_ND={"type": "image"})}},
        "input_data_to_model": {"type": "PassThroughTransformer", "config": {"variables": {"image": "CAM:ND"}}},
        **image_outputs_config(rows, cols),
    }
    pipeline = run_pipeline(config, load_model(local_path=tmp_path))
    client = runtime_client(run_pipeline, pipeline)
    wait_until(lambda: pipeline.evaluations >= 1)
    assert_image_outputs(client, image)


# ----------------------------------------------------------------------------- (d) dry run
def test_without_publish_nothing_is_written(p4p_pvs, linear_model, run_pipeline):
    server = p4p_pvs({"IN:X1": 1.0, "IN:X2": 2.0, "OUT:Y": -123.0})
    pipeline = run_pipeline(linear_config(server, output="p4p"), linear_model, publish=False)
    server.post("IN:X1", 5.0)
    wait_until(lambda: pipeline.last_outputs == {"OUT:Y": 8.0})  # evaluated: 2*5 - 2
    assert pipeline._putter is None  # no output interface exists at all
    time.sleep(0.2)  # give a (wrong) write time to land before checking
    assert server.get("OUT:Y") == -123.0
    assert metric(pipeline, "model_deploy_runtime_errors_total", stage="put") == 0


def test_with_publish_writes_into_an_external_pv_through_the_p4p_client(p4p_pvs, linear_model, run_pipeline):
    server = p4p_pvs({"IN:X1": 1.0, "IN:X2": 2.0, "OUT:Y": -123.0})
    pipeline = run_pipeline(linear_config(server, output="p4p"), linear_model)
    server.post("IN:X1", 5.0)
    wait_until(lambda: server.get("OUT:Y") == 8.0)
    assert pipeline.publish


# ----------------------------------------------------------------------------- (e) faults
def test_nan_input_is_counted_skipped_and_the_loop_recovers(p4p_pvs, linear_model, run_pipeline):
    server = p4p_pvs({"IN:X1": 1.0, "IN:X2": 2.0, "OUT:Y": 0.0})
    pipeline = run_pipeline(linear_config(server, output="p4p"), linear_model)
    wait_until(lambda: server.get("OUT:Y") == 0.0 and pipeline.evaluations >= 1)
    evaluations = pipeline.evaluations

    server.post("IN:X1", math.nan)
    wait_until(lambda: metric(pipeline, "model_deploy_runtime_non_finite_inputs_total") >= 1)
    assert pipeline.evaluations == evaluations  # NaN never reached the model
    assert pipeline.non_finite_inputs == ("x1",)
    report = pipeline.readiness()
    assert report.ok  # NaN from the machine is reported, not a reason to pull the pod
    assert report.details["non_finite_inputs"] == ["x1"]
    assert any("x1" in warning for warning in report.details["warnings"])

    server.post("IN:X2", math.inf)  # still non-finite: still skipped
    wait_until(lambda: metric(pipeline, "model_deploy_runtime_non_finite_inputs_total") >= 2)
    assert pipeline.evaluations == evaluations
    server.post("IN:X1", 4.0)
    server.post("IN:X2", 1.0)
    wait_until(lambda: server.get("OUT:Y") == 7.0)
    assert pipeline.evaluations > evaluations
    assert pipeline.non_finite_inputs == ()
    assert metric(pipeline, "model_deploy_runtime_errors_total", stage="model") == 0


FAILING_FACTORY = textwrap.dedent("""\
    class RefusesNegativeX1:
        '''A real (tiny) model that raises for x1 < 0, as a model with a domain check would.'''
        input_names = ["x1", "x2"]
        output_names = ["y"]

        def evaluate(self, inputs):
            if inputs["x1"] < 0:
                raise ValueError(f"x1 must be >= 0, got {inputs['x1']}")
            return {"y": inputs["x1"] + inputs["x2"]}


    class ModelFactory:
        def get_model(self):
            return RefusesNegativeX1()
    """)


def test_model_exception_is_counted_and_the_loop_keeps_running(p4p_pvs, tmp_path, run_pipeline, caplog):
    (tmp_path / "model_factory.py").write_text(FAILING_FACTORY)
    server = p4p_pvs({"IN:X1": 1.0, "IN:X2": 2.0, "OUT:Y": 0.0})
    pipeline = run_pipeline(linear_config(server, output="p4p"), load_model(local_path=tmp_path))
    wait_until(lambda: server.get("OUT:Y") == 3.0)

    with caplog.at_level(logging.ERROR, logger="model_deploy.runtime.pipeline"):
        for failures in range(1, 4):
            server.post("IN:X1", -float(failures))
            wait_until(lambda: metric(pipeline, "model_deploy_runtime_errors_total", stage="model") >= failures)
        server.post("IN:X1", 10.0)
        wait_until(lambda: server.get("OUT:Y") == 12.0)
    assert pipeline.worker_alive()
    assert pipeline.liveness().ok
    assert metric(pipeline, "model_deploy_runtime_errors_total", stage="model") == 3
    model_lines = [r for r in caplog.records if "stage model failed" in r.getMessage()]
    assert len(model_lines) == 1  # throttled: one line per 10 s, not one per failure
    assert "x1 must be >= 0" in model_lines[0].getMessage()


def test_disconnected_input_makes_readyz_503_naming_the_pv_then_recovers(p4p_pvs, linear_model, run_pipeline):
    server = p4p_pvs({"IN:X1": 1.0, "IN:X2": 2.0})
    pipeline = run_pipeline(linear_config(server), linear_model)
    http = MetricsServer(pipeline.metrics, 0, host="127.0.0.1", liveness=pipeline.liveness,
                         readiness=pipeline.readiness).start()
    base = f"http://127.0.0.1:{http.port}"
    try:
        wait_until(lambda: http_get(base + "/readyz")[0] == 200)
        assert metric(pipeline, "model_deploy_runtime_inputs_connected") == 2
        assert metric(pipeline, "model_deploy_runtime_inputs_configured") == 2

        server.stop()
        status, body = wait_until(lambda: (r := http_get(base + "/readyz"))[0] == 503 and r)
        report = json.loads(body)
        assert report["ok"] is False
        assert "input PV IN:X1 is disconnected" in report["reasons"]
        assert sorted(report["disconnected_inputs"]) == ["IN:X1", "IN:X2"]
        assert metric(pipeline, "model_deploy_runtime_inputs_connected") == 0
        assert http_get(base + "/healthz")[0] == 200  # alive, just not ready

        server.restart()  # same ports: the client reconnects by itself
        wait_until(lambda: http_get(base + "/readyz")[0] == 200, timeout=30)
        evaluations = pipeline.evaluations
        server.post("IN:X1", 6.0)
        wait_until(lambda: pipeline.last_outputs == {"OUT:Y": 10.0} and pipeline.evaluations > evaluations)
    finally:
        http.stop()


def test_put_failure_is_counted_by_stage(p4p_pvs, linear_model, run_pipeline):
    inputs = p4p_pvs({"IN:X1": 1.0, "IN:X2": 2.0})
    outputs = p4p_pvs({"OUT:Y": 0.0}, read_only=["OUT:Y"])  # a PV that refuses our writes
    pipeline = run_pipeline(linear_config(inputs, output="p4p", output_server=outputs), linear_model)
    wait_until(lambda: metric(pipeline, "model_deploy_runtime_errors_total", stage="put") >= 1)
    inputs.post("IN:X1", 3.0)
    wait_until(lambda: metric(pipeline, "model_deploy_runtime_errors_total", stage="put") >= 2)
    assert pipeline.worker_alive()
    assert outputs.get("OUT:Y") == 0.0


class SlowIOC:
    """The real p4p client putter, behind a control system that takes 0.3 s to acknowledge each write."""

    def __init__(self, putter, delay: float = 0.3):
        self.putter, self.delay, self.writes = putter, delay, 0

    def put_many(self, values):
        time.sleep(self.delay)
        self.putter.put_many(values)
        self.writes += 1

    def __getattr__(self, name):
        return getattr(self.putter, name)


def test_slow_output_writes_coalesce_inputs_and_the_latest_outputs_win(p4p_pvs, linear_model, run_pipeline):
    inputs = p4p_pvs({"IN:X1": 0.0, "IN:X2": 0.0})
    outputs = p4p_pvs({"OUT:Y": -1.0})
    config = linear_config(inputs, output="p4p", output_server=outputs)
    slow = SlowIOC(build_interface("p4p", config["output_data_to"]["config"]))
    pipeline = run_pipeline(config, linear_model, putter=slow)
    wait_until(lambda: outputs.get("OUT:Y") == 0.0)
    evaluations_before, writes_before = pipeline.evaluations, slow.writes

    for i in range(1, 11):  # 10 updates within ~1 write: they must not queue up 10 slow writes
        inputs.post("IN:X1", float(i))
        time.sleep(0.03)
    wait_until(lambda: outputs.get("OUT:Y") == 20.0, timeout=5)  # the newest outputs reach the IOC
    writes = slow.writes - writes_before
    evaluations = pipeline.evaluations - evaluations_before
    assert writes <= 4  # one in flight, one waiting, then the newest: not one write per update
    # Back-pressure: no evaluation is computed only to be thrown away while a set waits.
    assert evaluations <= writes + 1
    assert metric(pipeline, "model_deploy_runtime_superseded_outputs_total") == 0
    assert metric(pipeline, "model_deploy_runtime_coalesced_updates_total") >= 5
    assert metric(pipeline, "model_deploy_runtime_errors_total", stage="put") == 0


# ----------------------------------------------------------------------------- (h) coalescing, rate
def test_burst_of_1000_posts_is_coalesced_and_the_last_value_wins(p4p_pvs, linear_model, run_pipeline):
    server = p4p_pvs({"IN:X1": 0.0, "IN:X2": 1.0})
    pipeline = run_pipeline(linear_config(server), linear_model)
    client = runtime_client(run_pipeline, pipeline)
    wait_until(lambda: pipeline.evaluations >= 1)
    before = pipeline.evaluations

    posts = 1000
    for i in range(1, posts + 1):
        server.post("IN:X1", float(i))
    wait_until(lambda: client.get("OUT:Y", timeout=5) == 2.0 * posts - 1.0)
    evaluations = pipeline.evaluations - before
    assert 1 <= evaluations <= posts
    assert pipeline.last_inputs == {"x1": float(posts), "x2": 1.0}
    received = metric(pipeline, "model_deploy_runtime_updates_received_total")
    coalesced = metric(pipeline, "model_deploy_runtime_coalesced_updates_total")
    # every update the worker saw either led to a batch or was superseded inside one
    assert coalesced <= received
    logging.getLogger(__name__).info("1000 posts -> %d monitor updates, %d coalesced, %d evaluations",
                                     received, coalesced, evaluations)


def test_rate_limit_bounds_evaluations_and_keeps_the_latest_value(p4p_pvs, linear_model, run_pipeline):
    rate = 10.0
    server = p4p_pvs({"IN:X1": 0.0, "IN:X2": 0.0})
    pipeline = run_pipeline(linear_config(server, rate=rate), linear_model)
    wait_until(lambda: pipeline.evaluations >= 1)
    before, started = pipeline.evaluations, time.monotonic()
    for i in range(1, 201):
        server.post("IN:X1", float(i))
        time.sleep(0.0025)  # ~0.5 s of updates at 400 Hz
    wait_until(lambda: pipeline.last_outputs == {"OUT:Y": 400.0}, timeout=5)
    elapsed = time.monotonic() - started
    assert pipeline.evaluations - before <= elapsed * rate + 2


# ----------------------------------------------------------------------------- (g) step_once
def test_step_once_reads_evaluates_and_publishes_once(p4p_pvs, linear_model):
    server = p4p_pvs({"IN:X1": 4.0, "IN:X2": 1.5, "OUT:Y": 0.0})
    pipeline = Pipeline(load_config(linear_config(server, output="p4p")), linear_model, publish=True,
                        metrics=RuntimeMetrics())
    try:
        assert pipeline.step_once() == {"OUT:Y": 6.5}
        assert server.get("OUT:Y") == 6.5
        assert pipeline.evaluations == 1
    finally:
        pipeline.stop()


def test_step_once_with_a_missing_input_pv_names_the_stage_and_pv(p4p_pvs, linear_model):
    server = p4p_pvs({"IN:X1": 4.0})  # IN:X2 is not served anywhere
    config = linear_config(server, output="p4p")
    config["input_data"]["config"]["timeout"] = 0.5
    pipeline = Pipeline(load_config(config), linear_model, publish=False, metrics=RuntimeMetrics())
    try:
        with pytest.raises(PipelineError) as caught:
            pipeline.step_once()
        assert caught.value.stage == "get"
        assert "IN:X2" in str(caught.value)
        assert pipeline.metrics.sample("model_deploy_runtime_errors_total", {"stage": "get"}) == 1
    finally:
        pipeline.stop()


def test_stop_is_graceful_and_idempotent(p4p_pvs, linear_model, run_pipeline):
    server = p4p_pvs({"IN:X1": 1.0, "IN:X2": 2.0})
    pipeline = run_pipeline(linear_config(server), linear_model)
    wait_until(lambda: pipeline.evaluations >= 1)
    stop = threading.Event()
    runner = threading.Thread(target=pipeline.run_forever, args=(stop,))
    runner.start()
    started = time.monotonic()
    stop.set()
    runner.join(5)
    assert not runner.is_alive() and time.monotonic() - started < 3
    assert not pipeline.worker_alive()
    pipeline.stop()  # second stop is a no-op
    assert pipeline.liveness().ok  # stopped on purpose: not "dead"


# ----------------------------------------------------------------------------- metrics server, helpers
def test_metrics_server_endpoints():
    metrics = RuntimeMetrics()
    metrics.set_model("demo", "3", "mlflow")
    metrics.evaluations.inc(5)
    metrics.evaluation_duration.observe(0.0002)
    state = {"ready": False}

    def readiness():
        return readiness_report(model_loaded=state["ready"], connections={"A": True})

    server = MetricsServer(metrics, 0, host="127.0.0.1", readiness=readiness).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, body = http_get(base + "/metrics")
        text = body.decode()
        assert status == 200
        assert "model_deploy_runtime_evaluations_total 5.0" in text
        assert 'model_deploy_runtime_model_info{name="demo",source="mlflow",version="3"} 1.0' in text
        assert 'model_deploy_runtime_errors_total{stage="model"} 0.0' in text
        assert 'model_deploy_runtime_evaluation_duration_seconds_bucket{le="5e-05"} 0.0' in text
        assert 'model_deploy_runtime_evaluation_duration_seconds_bucket{le="0.00025"} 1.0' in text
        assert http_get(base + "/healthz")[0] == 200
        status, body = http_get(base + "/readyz")
        assert status == 503 and json.loads(body)["reasons"] == ["model not loaded yet"]
        state["ready"] = True
        assert http_get(base + "/readyz")[0] == 200
        assert http_get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_two_metric_sets_do_not_clash():
    first, second = RuntimeMetrics(), RuntimeMetrics()
    first.evaluations.inc()
    assert first.sample("model_deploy_runtime_evaluations_total") == 1
    assert second.sample("model_deploy_runtime_evaluations_total") == 0


def test_readiness_report_rules():
    assert readiness_report(model_loaded=True, connections={"A": True}).ok
    report = readiness_report(model_loaded=True, connections={"B": False, "A": False}, worker_alive=False)
    assert not report.ok
    assert report.reasons == ["pipeline worker thread is not running", "input PV A is disconnected",
                              "input PV B is disconnected"]
    report = readiness_report(model_loaded=True, connections={}, non_finite_inputs=["x1"])
    assert report.ok and report.details["non_finite_inputs"] == ["x1"]


def test_non_finite_keys():
    values = {"a": 1.0, "b": math.nan, "c": np.array([1.0, np.inf]), "d": np.zeros((2, 2)), "e": "text",
              "f": 3, "g": np.float32("nan")}
    assert non_finite_keys(values) == ["b", "c", "g"]


def test_throttled_log_suppresses_repeats(caplog):
    log = ThrottledLog(logging.getLogger("throttle-test"), logging.ERROR, interval=0.2)
    with caplog.at_level(logging.ERROR, logger="throttle-test"):
        for _ in range(1000):
            log("boom %s", 1)
        assert len(caplog.records) == 1
        time.sleep(0.25)
        log("boom %s", 2)
    assert len(caplog.records) == 2
    assert "999 similar messages suppressed" in caplog.records[1].getMessage()


# ----------------------------------------------------------------------------- graph form, shared server
def test_polylithic_modules_form_with_one_p4p_server_for_inputs_and_outputs(linear_model, run_pipeline):
    """poly-lithic's usual shape: ONE interface.p4p_server module hosts the inputs (clients write them)
    and the outputs (read-only); the seed lists p4p_server as an input as a known issue."""
    variables = pv_vars("IN:X1", "IN:X2", "OUT:Y")
    variables["IN:X1"]["default"] = 1.0
    variables["IN:X2"]["default"] = 2.0
    config = {
        "deployment": {"type": "continuous"},
        "modules": {
            "p4p_server": {"name": "p4p_server", "type": "interface.p4p_server", "pub": "in_interface",
                           "sub": ["get_all", "out_transformer"],
                           "config": {**LOOPBACK_SERVER, "variables": variables}},
            "input_transformer": {"name": "input_transformer", "type": "transformer.SimpleTransformer",
                                  "pub": "in_transformer", "sub": "in_interface", "config": {
                                      "symbols": ["IN:X1", "IN:X2"],
                                      "variables": {"x1": {"formula": "IN:X1"}, "x2": {"formula": "IN:X2"}}}},
            "model": {"name": "model", "type": "model.SimpleModel", "pub": "model", "sub": "in_transformer",
                      "config": {"variables": {"y": {"type": "scalar"}}}},
            "output_transformer": {"name": "output_transformer", "type": "transformer.SimpleTransformer",
                                   "pub": "out_transformer", "sub": "model", "config": {
                                       "symbols": ["y"], "variables": {"OUT:Y": {"formula": "y"}}}},
        },
    }
    pipeline = run_pipeline(config, linear_model)
    assert pipeline._getter is pipeline._putter  # one server, as configured
    client = runtime_client(run_pipeline, pipeline)
    wait_until(lambda: client.get("OUT:Y", timeout=5) == 0.0)  # defaults: 2*1 - 2
    client.put("IN:X1", 6.0, timeout=5)
    client.put("IN:X2", 2.5, timeout=5)
    wait_until(lambda: client.get("OUT:Y", timeout=5) == 9.5)
    with pytest.raises(Exception, match="read-only"):
        client.put("OUT:Y", 1.0, timeout=5)
    assert pipeline.connections() == {"IN:X1": True, "IN:X2": True}
