"""The `k2eg` interface, run through the real `k2eg` client library.

The k2eg gateway (a C++ service between Kafka and EPICS) and a Kafka broker cannot run here, so
these tests replace the ONE seam below the k2eg client: the confluent_kafka Producer/Consumer
that `k2eg.broker` creates. `FakeKafkaGateway` is that MOCK. Everything above it is real:
`k2eg.dml` builds the command JSON, waits for replies by reply_id, decodes msgpack and
dispatches monitor events on its own threads.

Covered: the commands our interface makes k2eg send (get, put with msgpack/base64 payloads,
multi-monitor), decoding of get replies and monitor events (scalars, CA waveforms, images),
gateway errors, timeouts, config validation. Not covered: real Kafka delivery semantics,
partition assignment timing, the gateway's real EPICS behaviour.
"""

from __future__ import annotations

import functools

import base64
import collections
import json
import os
import threading
import time

import k2eg.broker
import msgpack
import numpy as np
import pytest

from tests.waiting import wait_until

from model_deploy.runtime.errors import ConfigError
from model_deploy.runtime.interfaces import InterfaceError, build_interface
from model_deploy.runtime.interfaces.k2eg import CONFIG_FOLDER_KEY, K2EGInterface

CMD_TOPIC = "cmd-in-topic"
APP = "mdo-test"


class _Message:
    """Just the confluent_kafka.Message methods k2eg uses."""

    def __init__(self, topic: str, value: bytes, headers):
        self._topic, self._value, self._headers = topic, value, headers

    def error(self):
        return None

    def topic(self):
        return self._topic

    def value(self):
        return self._value

    def headers(self):
        return self._headers

    def partition(self):
        return 0

    def offset(self):
        return 0


class _TopicPartition:
    def __init__(self, topic: str):
        self.topic, self.partition, self.offset = topic, 0, -1


class FakeKafkaGateway:
    """MOCK of the k2eg Kafka gateway + Kafka broker, because neither can run in this sandbox.

    Installed in place of confluent_kafka's Producer and Consumer inside `k2eg.broker`. Commands
    produced on the command topic are recorded in `.commands` and answered like the gateway:
    msgpack replies (header k2eg-ser-type=msgpack) carrying reply_id and error, sent to the
    command's reply_topic; monitor events go to the topic named after the PV with ':' -> '_'.
    `.pvs` holds the PV maps the "IOC" serves; names in `.silent` are never answered.
    """

    def __init__(self):
        self.pvs: dict[str, dict] = {}
        self.commands: list[dict] = []
        self.puts: list[tuple[str, object]] = []
        self.silent: set[str] = set()
        self.consumer_configs: list[dict] = []
        self._consumers: list[_FakeConsumer] = []
        self._lock = threading.Lock()

    # factories patched over confluent_kafka.Producer / Consumer
    def producer(self, config):
        return _FakeProducer(self, config)

    def consumer(self, config):
        consumer = _FakeConsumer(config)
        with self._lock:
            self._consumers.append(consumer)
            self.consumer_configs.append(dict(config))
        return consumer

    def commands_of(self, kind: str) -> list[dict]:
        with self._lock:
            return [c for c in self.commands if c["command"] == kind]

    # the gateway's behaviour
    def _on_produce(self, topic: str, message) -> None:
        assert topic == CMD_TOPIC, f"k2eg sent a command to {topic!r}"
        command = json.loads(message)
        with self._lock:
            self.commands.append(command)
        kind, reply_id = command["command"], command["reply_id"]
        if kind in ("get", "put"):
            name = command["pv_name"].split("://", 1)[1]
            if name in self.silent:
                return
            if name not in self.pvs:
                self._reply(command, {"error": -1, "reply_id": reply_id, "message": f"{name} not found"})
                return
            if kind == "get":
                self._reply(command, {"error": 0, "reply_id": reply_id, name: self.pvs[name]})
            else:
                value = msgpack.unpackb(base64.b64decode(command["value"]))["value"]
                with self._lock:
                    self.puts.append((name, value))
                self.pvs[name] = {**self.pvs[name], "value": value}
                self._reply(command, {"error": 0, "reply_id": reply_id})
        elif kind in ("monitor", "multi-monitor"):
            self._reply(command, {"error": 0, "reply_id": reply_id})
        else:
            self._reply(command, {"error": -2, "reply_id": reply_id, "message": f"unknown command {kind}"})

    def _reply(self, command: dict, payload: dict) -> None:
        self.deliver(command["reply_topic"], payload)

    def deliver(self, topic: str, payload: dict) -> None:
        message = _Message(topic, msgpack.packb(payload, use_bin_type=True), [("k2eg-ser-type", b"msgpack")])
        with self._lock:
            consumers = list(self._consumers)
        for consumer in consumers:
            consumer.offer(message)

    def publish(self, name: str, value, *, seconds: float | None = None, severity: int = 0) -> None:
        """A monitor event for PV `name`, as the gateway forwards it from EPICS."""
        seconds = time.time() if seconds is None else seconds
        pv_map = {
            "value": value,
            "alarm": {"severity": severity, "status": 0, "message": ""},
            "timeStamp": {"secondsPastEpoch": int(seconds), "nanoseconds": int((seconds % 1) * 1e9), "userTag": 0},
        }
        self.deliver(name.replace(":", "_"), {name: pv_map})


class _FakeProducer:
    def __init__(self, gateway: FakeKafkaGateway, config):
        self.gateway, self.config = gateway, config

    def produce(self, topic, message):
        self.gateway._on_produce(topic, message)

    def flush(self, *args):
        return 0


class _FakeConsumer:
    def __init__(self, config):
        self.config = config
        self.topics: list[str] = []
        self.closed = False
        self._queue: collections.deque = collections.deque()
        self._ready = threading.Condition()

    def subscribe(self, topics, on_assign=None):
        self.topics = list(topics)
        # Real Kafka assigns during a later poll(); assigning at once keeps tests fast.
        if on_assign is not None:
            on_assign(self, [_TopicPartition(t) for t in self.topics])

    def offer(self, message: _Message) -> None:
        if message.topic() in self.topics:
            with self._ready:
                self._queue.append(message)
                self._ready.notify_all()

    def poll(self, timeout=None):
        with self._ready:
            self._ready.wait_for(lambda: self._queue, timeout)
            return self._queue.popleft() if self._queue else None

    def get_watermark_offsets(self, partition, *args, **kwargs):
        return 0, 0

    def assign(self, partitions):
        pass

    def commit(self, *args, **kwargs):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def gateway(monkeypatch) -> FakeKafkaGateway:
    fake = FakeKafkaGateway()
    monkeypatch.setattr(k2eg.broker, "Producer", fake.producer)
    monkeypatch.setattr(k2eg.broker, "Consumer", fake.consumer)
    return fake


@pytest.fixture
def k2eg_folder(tmp_path):
    (tmp_path / "env.ini").write_text(
        f"[DEFAULT]\nkafka_broker_url=kafka.invalid:9092\nk2eg_cmd_topic={CMD_TOPIC}\n"
    )
    return tmp_path


def pv_map(value, seconds=1_700_000_000.25, severity=0):
    return {
        "value": value,
        "alarm": {"severity": severity, "status": 0, "message": ""},
        "timeStamp": {"secondsPastEpoch": int(seconds), "nanoseconds": int((seconds % 1) * 1e9), "userTag": 0},
    }


CONFIG_VARIABLES = {
    "A": {"name": "K:A", "proto": "pva"},
    "B": {"name": "K:B", "proto": "ca"},
    "WF": {"name": "K:WF", "proto": "ca", "type": "waveform"},
    "IMG": {"name": "K:IMG", "proto": "ca", "type": "image", "image_size": {"x": 3, "y": 2}},
    "NDA": {"name": "K:NDA", "proto": "pva", "type": "image"},
    "OUT": {"name": "K:OUT", "proto": "pva"},
}


@pytest.fixture
def interface(gateway, k2eg_folder):
    config = {CONFIG_FOLDER_KEY: str(k2eg_folder), "app_name": APP, "timeout": 2.0, "variables": CONFIG_VARIABLES}
    built = K2EGInterface(config)
    yield built
    built.close()


wait_for = functools.partial(wait_until, timeout=5.0)


def test_client_uses_the_ini_and_app_name(interface, gateway, k2eg_folder):
    config = gateway.consumer_configs[0]
    assert config["bootstrap.servers"] == "kafka.invalid:9092"
    assert config["group.id"] == APP
    assert interface.settings["environment_id"] == "env"
    # The config folder is handed to k2eg through os.environ only while the client starts.
    assert os.environ.get(CONFIG_FOLDER_KEY) != str(k2eg_folder)


def test_get_sends_a_get_command_and_decodes_the_reply(interface, gateway):
    gateway.pvs["K:A"] = pv_map(1.5, severity=1)
    name, value = interface.get("A")
    assert name == "A"
    assert value == {"value": 1.5, "timestamp": pytest.approx(1_700_000_000.25), "severity": 1}
    (command,) = gateway.commands_of("get")
    assert command["pv_name"] == "pva://K:A"
    assert command["serialization"] == "msgpack"
    assert command["reply_topic"] == f"{APP}-reply"
    assert interface.connected()["A"] is True


def test_get_decodes_ca_waveforms_and_images(interface, gateway):
    gateway.pvs["K:B"] = pv_map(7)
    gateway.pvs["K:WF"] = pv_map([1, 2, 3])
    gateway.pvs["K:IMG"] = pv_map([0, 1, 2, 3, 4, 5])  # flat CA waveform, 2 rows x 3 cols
    gateway.pvs["K:NDA"] = {**pv_map(list(range(8))), "dimension": [{"size": 4}, {"size": 2}]}  # x first
    results = dict(interface.get_many(["B", "WF", "IMG", "NDA"]))
    assert results["B"]["value"] == 7.0 and type(results["B"]["value"]) is float
    np.testing.assert_array_equal(results["WF"]["value"], [1, 2, 3])
    np.testing.assert_array_equal(results["IMG"]["value"], [[0, 1, 2], [3, 4, 5]])
    assert results["NDA"]["value"].shape == (2, 4)
    assert sorted(c["pv_name"] for c in gateway.commands_of("get")) == [
        "ca://K:B", "ca://K:IMG", "ca://K:WF", "pva://K:NDA"
    ]


def test_gateway_error_names_the_pv(interface, gateway):
    with pytest.raises(InterfaceError) as info:
        interface.get("A")
    assert "pva://K:A" in str(info.value) and "K:A not found" in str(info.value)
    assert info.value.pvs == ["K:A"]
    assert interface.connected()["A"] is False


def test_no_reply_times_out_with_a_clear_error(gateway, k2eg_folder):
    gateway.silent.add("K:A")
    config = {CONFIG_FOLDER_KEY: str(k2eg_folder), "app_name": APP, "timeout": 0.3, "variables": CONFIG_VARIABLES}
    with K2EGInterface(config) as interface:
        started = time.monotonic()
        with pytest.raises(InterfaceError, match=r"no reply to get of pva://K:A .* within 0.3 s"):
            interface.get("A")
        assert time.monotonic() - started < 2.0


def test_get_many_reports_every_failed_pv(interface, gateway):
    gateway.pvs["K:A"] = pv_map(1.0)
    with pytest.raises(InterfaceError) as info:
        interface.get_many(["A", "B", "WF"])
    assert sorted(info.value.pvs) == ["K:B", "K:WF"]


def test_put_sends_msgpack_payloads(interface, gateway):
    for name in ("K:OUT", "K:WF", "K:IMG"):
        gateway.pvs[name] = pv_map(0.0)
    interface.put("OUT", 2.5)
    interface.put("WF", np.array([1.0, 2.0]))
    interface.put("IMG", {"value": np.array([[1, 2, 3], [4, 5, 6]])})
    assert gateway.puts == [("K:OUT", 2.5), ("K:WF", [1.0, 2.0]), ("K:IMG", [1, 2, 3, 4, 5, 6])]
    assert [c["pv_name"] for c in gateway.commands_of("put")] == ["pva://K:OUT", "ca://K:WF", "ca://K:IMG"]


def test_put_many_runs_all_and_reports_failures(interface, gateway):
    gateway.pvs["K:OUT"] = pv_map(0.0)
    with pytest.raises(InterfaceError) as info:
        interface.put_many({"OUT": 1.0, "A": 2.0})
    assert info.value.pvs == ["K:A"]
    assert gateway.puts == [("K:OUT", 1.0)]


def test_put_of_wrong_type_never_reaches_the_gateway(interface, gateway):
    with pytest.raises(InterfaceError, match="K:OUT.*expected one number"):
        interface.put("OUT", [1.0, 2.0])
    assert gateway.commands_of("put") == []


def test_monitor_subscribes_and_delivers_events(interface, gateway):
    events = []
    lock = threading.Lock()

    def on_update(name, value):
        with lock:
            events.append((name, value))

    interface.monitor(["A", "WF"], on_update)
    (command,) = gateway.commands_of("multi-monitor")
    assert command["pv_name_list"] == ["pva://K:A", "ca://K:WF"]
    assert command["activate"] is True

    gateway.publish("K:A", 3.0, severity=2)
    gateway.publish("K:WF", [4, 5])
    wait_for(lambda: len(events) == 2)
    by_name = dict(events)
    assert by_name["A"]["value"] == 3.0 and by_name["A"]["severity"] == 2
    np.testing.assert_array_equal(by_name["WF"]["value"], [4, 5])
    assert interface.connected()["A"] and interface.connected()["WF"]


def test_monitor_drops_events_older_than_the_last_delivered(interface, gateway):
    seen = []
    interface.monitor(["A"], lambda name, value: seen.append(value["value"]))
    gateway.publish("K:A", 1.0, seconds=100.0)
    wait_for(lambda: seen == [1.0])
    gateway.publish("K:A", 2.0, seconds=50.0)  # stale: k2eg handles events on a thread pool
    gateway.publish("K:A", 3.0, seconds=200.0)
    wait_for(lambda: 3.0 in seen)
    time.sleep(0.05)  # let any straggler event be processed
    assert 2.0 not in seen


def test_bad_k2eg_config_is_a_config_error(gateway, tmp_path, monkeypatch):
    monkeypatch.delenv(CONFIG_FOLDER_KEY, raising=False)
    with pytest.raises(ConfigError, match=f"{CONFIG_FOLDER_KEY}: not set; fix:"):
        K2EGInterface({"variables": {"A": {"name": "K:A"}}})

    with pytest.raises(ConfigError, match=r"lab\.ini does not exist; fix:"):
        K2EGInterface({CONFIG_FOLDER_KEY: str(tmp_path), "environment_id": "lab", "variables": {"A": {}}})

    (tmp_path / "env.ini").write_text("[DEFAULT]\nkafka_broker_url=k:9092\n")
    with pytest.raises(ConfigError, match="lacks 'k2eg_cmd_topic'"):
        K2EGInterface({CONFIG_FOLDER_KEY: str(tmp_path), "variables": {"A": {}}})

    with pytest.raises(ConfigError, match=r"variables\.A\.proto:.*fix: use pva or ca"):
        K2EGInterface({CONFIG_FOLDER_KEY: str(tmp_path), "variables": {"A": {"proto": "http"}}})
    assert gateway.consumer_configs == []  # nothing tried to connect


def test_folder_from_environment_and_build_interface(gateway, k2eg_folder, monkeypatch):
    monkeypatch.setenv(CONFIG_FOLDER_KEY, str(k2eg_folder))
    monkeypatch.setenv("K2EG_APP_NAME", "from-env")
    interface = build_interface("k2eg", {"variables": {"A": {"name": "K:A"}}})
    try:
        assert isinstance(interface, K2EGInterface)
        assert interface.settings["app_name"] == "from-env"
        assert gateway.consumer_configs[0]["group.instance.id"] == "from-env_1"
    finally:
        interface.close()
    interface.close()  # idempotent
    with pytest.raises(InterfaceError, match="closed"):
        interface.get("A")


def test_put_many_refuses_the_whole_batch_if_a_value_is_invalid(interface, gateway):
    gateway.pvs["K:OUT"] = pv_map(0.0)
    with pytest.raises(InterfaceError) as info:
        interface.put_many({"OUT": 1.0, "A": "not a number"})
    assert info.value.pvs == ["K:A"]
    assert gateway.commands_of("put") == []
