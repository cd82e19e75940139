"""The `p4p` client interface against a real p4p server on loopback (tests/fixtures/p4p_server.py)."""

from __future__ import annotations

import functools

import threading
import time

import numpy as np
import pytest

from tests.waiting import wait_until

from model_deploy.runtime.errors import ConfigError
from model_deploy.runtime.interfaces import InterfaceError, build_interface
from model_deploy.runtime.interfaces.p4p_client import P4PInterface

pytestmark = pytest.mark.p4p

IMAGE = np.arange(15, dtype=np.float64).reshape(3, 5)  # 3 rows, 5 columns: orientation is visible


wait_for = functools.partial(wait_until, timeout=5.0)


def variables(**types: str) -> dict:
    return {key: {"name": f"TEST:{key}", "proto": "pva", "type": kind} for key, kind in types.items()}


@pytest.fixture
def server(p4p_pvs):
    return p4p_pvs(
        {
            "TEST:A": 1.5,
            "TEST:B": -2.0,
            "TEST:WF": np.array([1.0, 2.0, 3.0, 4.0]),
            "TEST:IMG": IMAGE,
            "TEST:RO": 7.0,
        },
        read_only=["TEST:RO"],
    )


@pytest.fixture
def client(server):
    config = {"variables": variables(A="scalar", B="scalar", WF="waveform", IMG="image", RO="scalar")}
    interface = P4PInterface(config, context_conf=server.conf, useenv=False, timeout=1.0)
    yield interface
    interface.close()


class Recorder:
    """Monitor callback that records (name, value_dict) — thread-safe and cheap."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def __call__(self, name, value):
        with self.lock:
            self.events.append((name, value))

    def values(self, name):
        with self.lock:
            return [v["value"] for n, v in self.events if n == name]

    def last(self, name):
        values = self.values(name)
        return values[-1] if values else None


def test_get_converts_scalars_arrays_and_images(client):
    name, a = client.get("A")
    assert name == "A"
    assert type(a["value"]) is float and a["value"] == 1.5
    assert a["severity"] == 0 and a["timestamp"] > 1e9

    _, wf = client.get("WF")
    assert type(wf["value"]) is np.ndarray and wf["value"].ndim == 1
    np.testing.assert_array_equal(wf["value"], [1, 2, 3, 4])

    _, img = client.get("IMG")
    assert type(img["value"]) is np.ndarray  # plain ndarray, not p4p's subclass
    assert img["value"].shape == (3, 5)
    np.testing.assert_array_equal(img["value"], IMAGE)


def test_get_many_returns_all_in_request_order(client):
    results = client.get_many(["IMG", "B", "A"])
    assert [name for name, _ in results] == ["IMG", "B", "A"]
    assert results[1][1]["value"] == -2.0
    assert results[2][1]["value"] == 1.5
    assert client.connected() == {"A": True, "B": True, "WF": False, "IMG": True, "RO": False}


def test_config_name_servers_reach_the_server_over_tcp(server):
    # EPICS_PVA_NAME_SERVERS from the config alone; UDP search switched off.
    config = {
        "EPICS_PVA_NAME_SERVERS": f"192.0.2.1:5075 {server.name_servers}",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVA_ADDR_LIST": "",
        "variables": variables(A="scalar"),
    }
    with P4PInterface(config, useenv=False, timeout=2.0) as interface:
        assert interface.get("A")[1]["value"] == 1.5


def test_missing_pv_gives_clear_error_naming_it(client, server):
    config = {"variables": {"GHOST": {"name": "TEST:DOES_NOT_EXIST"}}}
    with P4PInterface(config, context_conf=server.conf, useenv=False, timeout=0.3) as missing:
        started = time.monotonic()
        with pytest.raises(InterfaceError) as info:
            missing.get("GHOST")
        assert time.monotonic() - started < 2.0
    message = str(info.value)
    assert "TEST:DOES_NOT_EXIST" in message and "0.3 s" in message and "EPICS_PVA_NAME_SERVERS" in message
    assert info.value.pvs == ["TEST:DOES_NOT_EXIST"]
    assert info.value.__cause__ is None  # no chained traceback from the depths of p4p


def test_get_many_names_only_the_missing_pvs(server):
    config = {"variables": {"A": {"name": "TEST:A"}, "GHOST": {"name": "TEST:GHOST"}}}
    with P4PInterface(config, context_conf=server.conf, useenv=False, timeout=0.3) as interface:
        with pytest.raises(InterfaceError) as info:
            interface.get_many(["A", "GHOST"])
    assert info.value.pvs == ["TEST:GHOST"]
    assert "TEST:A'" not in str(info.value)


def test_unknown_variable_is_an_interface_error(client):
    with pytest.raises(InterfaceError, match="unknown variable 'NOPE'.*A, B, WF, IMG, RO"):
        client.get("NOPE")


def test_put_scalar_array_and_non_square_image(client, server):
    tall = np.arange(6, dtype=np.float64).reshape(3, 2)
    client.put("A", 42.25)
    client.put("WF", np.array([9.0, 8.0]))
    client.put("IMG", tall)
    assert server.get("TEST:A") == 42.25
    np.testing.assert_array_equal(server.get("TEST:WF"), [9.0, 8.0])
    assert server.get("TEST:IMG").shape == (3, 2)
    np.testing.assert_array_equal(server.get("TEST:IMG"), tall)
    # ...and reading it back through the interface keeps the orientation.
    np.testing.assert_array_equal(client.get("IMG")[1]["value"], tall)


def test_put_accepts_value_dicts(client, server):
    client.put("B", {"value": 3.0})
    assert server.get("TEST:B") == 3.0


def test_put_many_writes_everything_in_one_call(client, server):
    wide = np.ones((2, 7), dtype=np.float32)
    client.put_many({"A": 1.0, "B": 2.0, "WF": [5.0, 6.0, 7.0], "IMG": wide})
    assert (server.get("TEST:A"), server.get("TEST:B")) == (1.0, 2.0)
    np.testing.assert_array_equal(server.get("TEST:WF"), [5, 6, 7])
    assert server.get("TEST:IMG").shape == (2, 7)


def test_put_of_wrong_shape_is_rejected_before_the_wire(client, server):
    with pytest.raises(InterfaceError, match=r"TEST:IMG.*expected a 2-D image.*shape \(4,\)"):
        client.put("IMG", np.zeros(4))
    with pytest.raises(InterfaceError, match=r"TEST:A.*expected one number"):
        client.put("A", np.zeros(3))
    np.testing.assert_array_equal(server.get("TEST:IMG"), IMAGE)
    assert server.get("TEST:A") == 1.5


def test_put_rejected_by_server_names_pv_and_reason(client, server):
    with pytest.raises(InterfaceError) as info:
        client.put_many({"A": 5.0, "RO": 1.0})
    assert info.value.pvs == ["TEST:RO"]
    assert "read-only" in str(info.value)
    assert server.get("TEST:A") == 5.0  # the good put still happened
    assert server.get("TEST:RO") == 7.0


def test_monitor_delivers_initial_and_updates_for_scalars_and_images(client, server):
    recorder = Recorder()
    client.monitor(["A", "IMG"], recorder)
    wait_for(lambda: recorder.last("A") == 1.5 and recorder.last("IMG") is not None)
    server.post("TEST:A", 2.5)
    new_image = np.full((4, 6), 3.0)
    server.post("TEST:IMG", new_image)
    wait_for(lambda: recorder.last("A") == 2.5)
    wait_for(lambda: recorder.last("IMG").shape == (4, 6))
    np.testing.assert_array_equal(recorder.last("IMG"), new_image)
    assert all(type(v) is float for v in recorder.values("A"))
    assert client.connected()["A"] and client.connected()["IMG"]


def test_monitor_storm_ends_on_last_value_in_order(client, server):
    recorder = Recorder()
    client.monitor(["B"], recorder)
    wait_for(lambda: recorder.last("B") == -2.0)
    for i in range(1000):
        server.post("TEST:B", float(i))
    wait_for(lambda: recorder.last("B") == 999.0, timeout=10.0)
    seen = recorder.values("B")[1:]
    assert len(seen) <= 1000  # coalescing allowed
    assert seen == sorted(seen)  # never out of order


def test_update_arriving_before_the_subscription_handle_exists_is_not_lost(client, server, monkeypatch):
    """p4p 4.3's Context.monitor could drop the first update when it arrived before the subscription
    handle was stored; the server then never signalled that PV again. Widen that window on purpose:
    the handle is returned only after p4p has already signalled the initial value."""
    from model_deploy.runtime.interfaces import p4p_client

    real_monitor = p4p_client.RawContext.monitor

    def slow_to_return(context, name, handler, *args, **kwargs):
        subscription = real_monitor(context, name, handler, *args, **kwargs)
        time.sleep(0.5)  # the initial value is queued and its wake-up delivered meanwhile
        return subscription

    monkeypatch.setattr(p4p_client.RawContext, "monitor", slow_to_return)
    recorder = Recorder()
    client.monitor(["A"], recorder)
    wait_for(lambda: recorder.last("A") == 1.5)
    server.post("TEST:A", 4.25)
    wait_for(lambda: recorder.last("A") == 4.25)


def test_subscribing_during_an_update_storm_never_loses_a_pv(server):
    stop = threading.Event()

    def storm():
        value = 0.0
        while not stop.is_set():
            value += 1.0
            server.post("TEST:A", value)
            server.post("TEST:B", -value)

    poster = threading.Thread(target=storm, daemon=True)
    poster.start()
    interfaces, recorders = [], []
    try:
        for _ in range(20):
            interface = P4PInterface({"variables": variables(A="scalar", B="scalar")}, context_conf=server.conf,
                                     useenv=False, timeout=1.0)
            recorder = Recorder()
            interface.monitor(["A", "B"], recorder)
            interfaces.append(interface)
            recorders.append(recorder)
    finally:
        stop.set()
        poster.join()
    try:
        server.post("TEST:A", 1e6)
        server.post("TEST:B", -1e6)
        for recorder in recorders:  # every subscription still follows its PV to the final value
            wait_for(lambda recorder=recorder: recorder.last("A") == 1e6 and recorder.last("B") == -1e6)
    finally:
        for interface in interfaces:
            interface.close()


def test_failing_callback_does_not_stop_updates(client, server, caplog):
    seen = []

    def explode(name, value):
        seen.append(value["value"])
        raise RuntimeError("boom")

    client.monitor(["A"], explode)
    wait_for(lambda: 1.5 in seen)
    server.post("TEST:A", 8.0)
    wait_for(lambda: 8.0 in seen)
    assert "monitor callback for A raised" in caplog.text


def test_disconnect_and_reconnect_on_the_same_port(client, server):
    recorder = Recorder()
    client.monitor(["A", "WF"], recorder)
    wait_for(lambda: client.connected()["A"] and client.connected()["WF"])

    server.stop()
    wait_for(lambda: not client.connected()["A"] and not client.connected()["WF"])
    assert client.disconnect_counts["A"] == 1
    # Nothing but real values ever reached the callback.
    assert all(type(v) is float for v in recorder.values("A"))
    assert all(isinstance(v, np.ndarray) for v in recorder.values("WF"))

    server.post("TEST:A", 11.0)
    server.restart()
    wait_for(lambda: client.connected()["A"], timeout=10.0)
    wait_for(lambda: recorder.last("A") == 11.0)
    server.post("TEST:A", 12.0)
    wait_for(lambda: recorder.last("A") == 12.0)
    assert client.disconnect_counts["A"] == 1
    assert client.get("A")[1]["value"] == 12.0


def test_close_is_idempotent_and_later_use_is_a_clear_error(server):
    interface = P4PInterface({"variables": variables(A="scalar")}, context_conf=server.conf, useenv=False)
    interface.close()
    interface.close()
    with pytest.raises(InterfaceError, match="closed"):
        interface.get("A")


def test_build_interface_makes_a_p4p_client(server):
    interface = build_interface("p4p", {"variables": variables(A="scalar")}, context_conf=server.conf, useenv=False)
    try:
        assert isinstance(interface, P4PInterface)
        assert interface.variable_names == ["A"]
        assert interface.get("A")[1]["value"] == 1.5
    finally:
        interface.close()


def test_build_interface_rejects_unknown_method():
    with pytest.raises(ConfigError) as info:
        build_interface("epics_magic", {"variables": variables(A="scalar")})
    assert "'epics_magic'" in str(info.value)
    assert "k2eg, p4p, p4p_server" in str(info.value)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"variables": {"X": {"proto": "ca", "name": "X"}}}, "variables.X.proto: 'ca' is not supported by p4p"),
        ({"variables": {"X": {"type": "picture"}}}, "variables.X.type:"),
        ({"variables": {"X": {"type": "image", "image_size": {"x": 0, "y": 2}}}}, "variables.X.image_size.x:"),
        ({"variables": {}}, "variables: missing or empty"),
        ({"variables": {"X": {}}, "timeout": -1}, "timeout: expected a positive number"),
        ({"variables": {"X": {}}, "EPICS_PVA_NAME_SERVERS": "host:notaport"}, "EPICS_PVA_NAME_SERVERS: invalid"),
    ],
)
def test_bad_config_is_a_config_error_naming_field_and_fix(config, expected):
    with pytest.raises(ConfigError) as info:
        P4PInterface(config, useenv=False)
    text = str(info.value)
    assert expected in text
    assert "fix:" in text


def test_config_error_lists_every_problem_at_once():
    config = {"variables": {"X": {"type": "picture"}, "Y": {"proto": "ca"}}}
    with pytest.raises(ConfigError) as info:
        P4PInterface(config, useenv=False, field_prefix="input_data.config.")
    problems = info.value.problems
    assert any(p.startswith("input_data.config.variables.X.type") for p in problems)
    assert any(p.startswith("input_data.config.variables.Y.proto") for p in problems)


def test_variable_name_defaults_to_key(server):
    with P4PInterface({"variables": {"TEST:A": None}}, context_conf=server.conf, useenv=False) as interface:
        assert interface.get("TEST:A")[1]["value"] == 1.5


def test_put_many_with_an_invalid_value_writes_nothing(client, server):
    with pytest.raises(InterfaceError) as info:
        client.put_many({"A": 9.0, "IMG": np.zeros(3)})
    assert info.value.pvs == ["TEST:IMG"]
    assert server.get("TEST:A") == 1.5


class ScriptedMonitor:
    """Stands in for p4p's monitor queue only, to drive DirectSubscription's drain loop through pops that
    fail (a value p4p cannot unwrap), which a real server cannot be made to produce on demand."""

    def __init__(self, script):
        self.script = list(script)
        self.pops = 0

    def pop(self):
        self.pops += 1
        item = self.script.pop(0) if self.script else None
        if isinstance(item, Exception):
            raise item
        return item

    def close(self):
        pass


def test_direct_subscription_reports_failed_pops_and_keeps_draining(monkeypatch):
    from model_deploy.runtime.interfaces import p4p_client

    queue = ScriptedMonitor([1.0, ValueError("cannot unwrap"), 2.0, None])
    monkeypatch.setattr(p4p_client.RawContext, "monitor", lambda context, name, handler: queue)
    delivered = []
    subscription = p4p_client.DirectSubscription(object(), "PV:A", delivered.append)
    subscription._on_wakeup()
    assert delivered[0] == 1.0 and isinstance(delivered[1], ValueError) and delivered[2] == 2.0

    broken = ScriptedMonitor([RuntimeError("broken")] * 1000)
    monkeypatch.setattr(p4p_client.RawContext, "monitor", lambda context, name, handler: broken)
    p4p_client.DirectSubscription(object(), "PV:B", lambda update: None)._on_wakeup()
    assert broken.pops == p4p_client.MAX_FAILED_POPS + 1  # gave up instead of spinning
