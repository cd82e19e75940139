"""The shared p4p test fixtures (tests/fixtures/p4p_server.py) do what other tests rely on."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from p4p.client.thread import RemoteError

pytestmark = pytest.mark.p4p


def test_hosts_scalars_arrays_and_images_with_normative_types(p4p_pvs):
    server = p4p_pvs({"A": 1.0, "N": 3, "WF": np.arange(4.0), "IMG": np.zeros((3, 5))})
    ctx = server.client()
    a, n, wf, img = ctx.get(["A", "N", "WF", "IMG"], timeout=2)
    assert a.raw.getID() == "epics:nt/NTScalar:1.0" and float(a) == 1.0
    assert float(n) == 3.0 and isinstance(n, float)
    assert wf.raw.getID() == "epics:nt/NTScalarArray:1.0"
    assert img.raw.getID() == "epics:nt/NTNDArray:1.0" and img.shape == (3, 5)
    assert set(server.pvs) == {"A", "N", "WF", "IMG"}
    assert server.conf["EPICS_PVA_SERVER_PORT"] == str(server.port)


def test_post_and_get_round_trip(p4p_pvs):
    server = p4p_pvs({"A": 0.0, "IMG": np.zeros((2, 2))})
    server.post("A", 4.0)
    server.post("IMG", np.ones((4, 3)))
    assert server.get("A") == 4.0
    assert type(server.get("IMG")) is np.ndarray and server.get("IMG").shape == (4, 3)
    assert server.client().get("A", timeout=2) == 4.0


def test_pvs_are_writable_by_clients_unless_read_only(p4p_pvs):
    server = p4p_pvs({"W": 0.0, "R": 1.0}, read_only=["R"])
    ctx = server.client()
    ctx.put("W", 2.0, timeout=2)
    assert server.get("W") == 2.0
    with pytest.raises(RemoteError, match="read-only"):
        ctx.put("R", 2.0, timeout=2)
    with pytest.raises(ValueError, match="not in the PVs"):
        p4p_pvs({"W": 0.0}, read_only=["X"])


def test_stop_and_restart_keep_port_and_values(p4p_pvs):
    server = p4p_pvs({"A": 5.0})
    port = server.port
    ctx = server.client()
    assert ctx.get("A", timeout=2) == 5.0
    server.stop()
    assert not server.running
    with pytest.raises(TimeoutError):
        ctx.get("A", timeout=0.3)
    server.restart()
    assert server.port == port and server.running
    assert ctx.get("A", timeout=3) == 5.0


def test_pva_env_lets_a_subprocess_find_the_servers(p4p_pvs, pva_env):
    first = p4p_pvs({"ONE": 1.0})
    second = p4p_pvs({"TWO": 2.0})
    env = pva_env(first, second)
    assert env["EPICS_PVA_NAME_SERVERS"] == f"{first.name_servers} {second.name_servers}"
    script = (
        "from p4p.client.thread import Context; c = Context('pva'); "
        "print(c.get('ONE', timeout=3) + c.get('TWO', timeout=3))"
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3.0"
