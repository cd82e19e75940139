"""The `p4p_server` interface: PVs hosted in-process, checked with real PVAccess clients."""

from __future__ import annotations

import functools

import logging
import socket
import threading
import time

import numpy as np
import pytest

from tests.waiting import wait_until
from p4p.client.thread import Context, RemoteError
from p4p.nt import NTNDArray

from model_deploy.runtime.errors import ConfigError
from model_deploy.runtime.interfaces import InterfaceError, build_interface
from model_deploy.runtime.interfaces.p4p_client import P4PInterface
from model_deploy.runtime.interfaces.p4p_server import P4PServerInterface

pytestmark = pytest.mark.p4p

CONFIG = {
    "variables": {
        "Y": {"name": "OUT:Y", "proto": "pva"},  # implicitly scalar
        "Y0": {"name": "OUT:Y0", "proto": "pva", "type": "scalar", "default": 4.5},
        "WF": {"name": "OUT:WF", "proto": "pva", "type": "waveform", "length": 3},
        "ARR": {"name": "OUT:ARR", "proto": "pva", "type": "array", "default": [1, 2]},
        "IMG": {"name": "OUT:IMG", "proto": "pva", "type": "image", "image_size": {"x": 640, "y": 480}},
    }
}


wait_for = functools.partial(wait_until, timeout=5.0)


@pytest.fixture
def hosted():
    servers = []

    def start(config=CONFIG, **options):
        server = P4PServerInterface(config, isolate=True, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def pva_client():
    contexts = []

    def connect(server: P4PServerInterface) -> Context:
        ctx = Context("pva", conf=server.server_conf(), useenv=False)
        contexts.append(ctx)
        return ctx

    yield connect
    for ctx in contexts:
        ctx.close()


class Recorder:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def __call__(self, name, value):
        with self.lock:
            self.events.append((name, value))

    def last(self, name):
        with self.lock:
            values = [v["value"] for n, v in self.events if n == name]
        return values[-1] if values else None


def test_hosts_initial_values_with_the_right_types(hosted, pva_client):
    server = hosted()
    ctx = pva_client(server)
    y, y0, wf, arr, img = ctx.get(["OUT:Y", "OUT:Y0", "OUT:WF", "OUT:ARR", "OUT:IMG"], timeout=2)
    assert float(y) == 0.0 and float(y0) == 4.5
    np.testing.assert_array_equal(wf, np.zeros(3))
    np.testing.assert_array_equal(arr, [1.0, 2.0])
    assert img.shape == (480, 640)  # image_size y rows, x columns
    assert not img.any()
    assert y.raw.getID() == "epics:nt/NTScalar:1.0"
    assert wf.raw.getID() == "epics:nt/NTScalarArray:1.0"
    assert img.raw.getID() == "epics:nt/NTNDArray:1.0"
    # the NTNDArray dimension list is x first
    assert [d["size"] for d in img.raw.dimension] == [640, 480]


def test_get_returns_current_values(hosted):
    server = hosted()
    assert server.get("Y0") == ("Y0", {"value": 4.5, "timestamp": pytest.approx(time.time(), abs=60), "severity": 0})
    name, img = server.get("IMG")
    assert img["value"].shape == (480, 640)
    assert server.connected() == {key: True for key in CONFIG["variables"]}


def test_put_posts_values_clients_can_see(hosted, pva_client):
    server = hosted()
    ctx = pva_client(server)
    image = np.arange(12, dtype=np.float64).reshape(3, 4)  # non-square: rows != columns
    server.put("Y", 1.25)
    server.put_many({"WF": [7.0, 8.0, 9.0, 10.0], "IMG": image, "ARR": {"value": np.array([3.0])}})
    y, wf, img, arr = ctx.get(["OUT:Y", "OUT:WF", "OUT:IMG", "OUT:ARR"], timeout=2)
    assert float(y) == 1.25 and y.timestamp == pytest.approx(time.time(), abs=5)
    np.testing.assert_array_equal(wf, [7, 8, 9, 10])
    assert img.shape == (3, 4)
    np.testing.assert_array_equal(img, image)
    np.testing.assert_array_equal(arr, [3.0])


def test_client_monitor_sees_every_put(hosted, pva_client):
    server = hosted()
    ctx = pva_client(server)
    seen = []
    sub = ctx.monitor("OUT:Y", lambda v: seen.append(float(v)))
    try:
        wait_for(lambda: seen == [0.0])
        for value in (1.0, 2.0, 3.0):
            server.put("Y", value)
        wait_for(lambda: seen and seen[-1] == 3.0)
    finally:
        sub.close()


def test_outputs_are_read_only_to_clients(hosted, pva_client):
    server = hosted(role="output")
    ctx = pva_client(server)
    with pytest.raises(RemoteError, match="read-only: OUT:Y"):
        ctx.put("OUT:Y", 99.0, timeout=2)
    with pytest.raises(RemoteError, match="read-only: OUT:IMG"):
        ctx.put("OUT:IMG", NTNDArray().wrap(np.ones((2, 2))), timeout=2)
    assert server.get("Y")[1]["value"] == 0.0
    assert not server.is_writable("Y")


def test_without_role_only_monitored_pvs_accept_client_writes(hosted, pva_client):
    server = hosted()
    ctx = pva_client(server)
    with pytest.raises(RemoteError, match="read-only"):
        ctx.put("OUT:Y", 5.0, timeout=2)
    recorder = Recorder()
    server.monitor(["Y"], recorder)
    assert recorder.last("Y") == 0.0  # current value delivered on monitor(), like a PVA monitor
    ctx.put("OUT:Y", 5.0, timeout=2)
    wait_for(lambda: recorder.last("Y") == 5.0)
    assert server.get("Y")[1]["value"] == 5.0
    with pytest.raises(RemoteError, match="read-only"):
        ctx.put("OUT:Y0", 5.0, timeout=2)  # not monitored: still an output


def test_input_pvs_are_writable_and_reach_the_monitor(hosted, pva_client):
    server = hosted(role="input")
    ctx = pva_client(server)
    recorder = Recorder()
    server.monitor(["Y", "IMG", "WF"], recorder)
    image = np.arange(6, dtype=np.float64).reshape(2, 3)
    ctx.put("OUT:Y", 2.0, timeout=2)
    ctx.put("OUT:IMG", NTNDArray().wrap(image), timeout=2)
    ctx.put("OUT:WF", np.array([1.0, 2.0]), timeout=2)
    wait_for(lambda: recorder.last("Y") == 2.0)
    wait_for(lambda: recorder.last("IMG").shape == (2, 3))
    np.testing.assert_array_equal(recorder.last("IMG"), image)
    wait_for(lambda: list(recorder.last("WF")) == [1.0, 2.0])
    assert all(isinstance(v["value"], np.ndarray) for n, v in recorder.events if n == "IMG")


def test_bad_client_write_is_rejected_with_a_reason(hosted, pva_client):
    server = hosted(role="input")
    ctx = pva_client(server)
    with pytest.raises(RemoteError, match="rejected: .*OUT:IMG.*expected a 2-D image"):
        ctx.put("OUT:IMG", NTNDArray().wrap(np.zeros((2, 2, 3))), timeout=2)  # RGB
    assert server.get("IMG")[1]["value"].shape == (480, 640)


def test_per_variable_mode_overrides_role(hosted, pva_client):
    config = {"variables": {"IN": {"name": "M:IN", "mode": "in"}, "OUT": {"name": "M:OUT", "mode": "out"}}}
    server = hosted(config, role="output")
    ctx = pva_client(server)
    ctx.put("M:IN", 1.0, timeout=2)
    with pytest.raises(RemoteError, match="read-only"):
        ctx.put("M:OUT", 1.0, timeout=2)
    assert server.get("IN")[1]["value"] == 1.0


def test_pipeline_put_of_wrong_shape_is_a_clear_error(hosted):
    server = hosted()
    with pytest.raises(InterfaceError, match=r"OUT:IMG.*expected a 2-D image.*shape \(5,\)"):
        server.put("IMG", np.zeros(5))
    with pytest.raises(InterfaceError) as info:
        server.put_many({"Y": "abc", "WF": np.zeros((2, 2)), "Y0": 1.0})
    assert sorted(info.value.pvs) == ["OUT:WF", "OUT:Y"]
    assert server.get("Y0")[1]["value"] == 1.0
    with pytest.raises(InterfaceError, match="unknown variable 'NOPE'"):
        server.put("NOPE", 1.0)


def test_p4p_client_interface_round_trips_through_hosted_pvs(hosted):
    server = hosted(role="input")
    client_config = {"variables": {"IMG": {"name": "OUT:IMG", "type": "image"}, "Y": {"name": "OUT:Y"}}}
    with P4PInterface(client_config, context_conf=server.server_conf(), useenv=False) as client:
        recorder = Recorder()
        server.monitor(["IMG"], recorder)
        image = np.random.default_rng(0).random((5, 9))
        client.put_many({"IMG": image, "Y": 3.5})
        wait_for(lambda: recorder.last("IMG").shape == (5, 9))
        np.testing.assert_array_equal(server.get("IMG")[1]["value"], image)
        np.testing.assert_array_equal(client.get("IMG")[1]["value"], image)
        assert client.get("Y")[1]["value"] == 3.5


def test_build_interface_passes_options(pva_client):
    server = build_interface("p4p_server", CONFIG, isolate=True, role="input")
    try:
        assert isinstance(server, P4PServerInterface)
        assert server.variable_names == list(CONFIG["variables"])
        pva_client(server).put("OUT:Y", 6.0, timeout=2)
        assert server.get("Y")[1]["value"] == 6.0
    finally:
        server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LOOPBACK = {"EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_PVAS_BROADCAST_PORT": "0"}


def test_configured_port_is_used_and_a_busy_port_is_reported(caplog):
    port = free_port()
    config = {"port": port, "variables": {"P": {"name": "PORT:P"}}, **LOOPBACK}
    first = P4PServerInterface(config)
    try:
        assert first.server_conf()["EPICS_PVAS_SERVER_PORT"] == str(port)
        with caplog.at_level(logging.WARNING):
            second = P4PServerInterface({**config, "variables": {"Q": {"name": "PORT:Q"}}})
        try:
            assert second.server_conf()["EPICS_PVAS_SERVER_PORT"] != str(port)
            assert f"port {port} is busy" in caplog.text
        finally:
            second.close()
    finally:
        first.close()
    assert first.connected() == {"P": False}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"variables": {"I": {"type": "image"}}}, "variables.I.image_size: required for a hosted image"),
        ({"variables": {"A": {"name": "SAME"}, "B": {"name": "SAME"}}}, "variables.B.name: PV 'SAME' is also used"),
        ({"variables": {"A": {"default": "abc"}}}, "variables.A.default:"),
        ({"variables": {"A": {"mode": "sideways"}}}, "variables.A.mode:"),
    ],
)
def test_bad_config_is_a_config_error(config, expected):
    with pytest.raises(ConfigError) as info:
        P4PServerInterface(config, isolate=True)
    assert expected in str(info.value)
    assert "fix:" in str(info.value)
