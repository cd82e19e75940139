#!/usr/bin/env python3
"""The quickstart's simulated control system: one p4p (PVAccess) server on loopback, like a real IOC.

Hosts
  * input PVs  <prefix>:X1 and <prefix>:X2 (NTScalar double), posted --rate times a second, following
    slow sinusoids (X1 = sin(2 pi t / period), X2 = 0.5 cos(2 pi t / (1.7 period))), so a model's
    output visibly moves;
  * output PV  <prefix>:Y (NTScalar double, initially 0.0), writable: the runtime puts its output
    there with the `p4p` put_method, as it would into a real IOC's record.

Only loopback is used (no UDP broadcast beyond 127.0.0.1). On start it prints the client settings
(`EPICS_PVA_...=value` lines) and then a line starting with `ready`, so a parent process can read them:

    EPICS_PVA_NAME_SERVERS=127.0.0.1:41234
    EPICS_PVA_ADDR_LIST=
    EPICS_PVA_AUTO_ADDR_LIST=NO
    ready DEMO:X1 DEMO:X2 DEMO:Y

Usage: python scripts/demo_ioc.py [--port 0] [--broadcast-port 0] [--rate 5] [--period 10] [--prefix DEMO]
SIGINT/SIGTERM stop the server and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Sequence

from p4p.nt import NTScalar
from p4p.server import Server
from p4p.server.thread import SharedPV

logger = logging.getLogger("demo_ioc")


def input_values(t: float, period: float) -> tuple[float, float]:
    """(X1, X2) at time t: two sinusoids with incommensurate periods."""
    x1 = math.sin(2 * math.pi * t / period)
    x2 = 0.5 * math.cos(2 * math.pi * t / (1.7 * period))
    return x1, x2


def make_writable_pv(initial: float) -> SharedPV:
    pv = SharedPV(nt=NTScalar("d"), initial=initial, timestamp=time.time())

    @pv.put
    def _on_put(pv: SharedPV, op) -> None:  # noqa: ANN001 - p4p's callback signature
        pv.post(op.value(), timestamp=time.time())
        op.done()

    return pv


def server_conf(port: int, broadcast_port: int) -> dict[str, str]:
    """Loopback-only server settings (0 = let the OS pick a free port)."""
    return {
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVA_SERVER_PORT": str(port),
        "EPICS_PVA_BROADCAST_PORT": str(broadcast_port),
    }


def client_env(conf: dict[str, str]) -> dict[str, str]:
    """What a client process needs to reach this server over TCP only (no broadcast search)."""
    port = conf.get("EPICS_PVAS_SERVER_PORT") or conf["EPICS_PVA_SERVER_PORT"]
    return {
        "EPICS_PVA_NAME_SERVERS": f"127.0.0.1:{port}",
        "EPICS_PVA_ADDR_LIST": "",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Simulated control system for the quickstart (p4p server).")
    parser.add_argument("--port", type=int, default=0, help="PVA TCP port (0: pick a free one)")
    parser.add_argument("--broadcast-port", type=int, default=0, help="PVA UDP search port (0: pick a free one)")
    parser.add_argument("--rate", type=float, default=5.0, help="input updates per second (default 5)")
    parser.add_argument("--period", type=float, default=10.0, help="period of the X1 sinusoid in seconds")
    parser.add_argument("--prefix", default="DEMO", help="PV name prefix (default DEMO)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.period <= 0:
        parser.error("--rate and --period must be positive")
    for option in ("port", "broadcast_port"):
        if not 0 <= getattr(args, option) <= 65535:
            parser.error(f"--{option.replace('_', '-')} must be 0-65535")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s demo_ioc %(levelname)s: %(message)s")
    names = {key: f"{args.prefix}:{key}" for key in ("X1", "X2", "Y")}
    start = time.monotonic()
    x1, x2 = input_values(0.0, args.period)
    pvs = {
        names["X1"]: SharedPV(nt=NTScalar("d"), initial=x1, timestamp=time.time()),
        names["X2"]: SharedPV(nt=NTScalar("d"), initial=x2, timestamp=time.time()),
        names["Y"]: make_writable_pv(0.0),
    }
    try:
        server = Server(providers=[pvs], conf=server_conf(args.port, args.broadcast_port), useenv=False)
    except Exception as exc:  # port taken, ...: one clear line, no traceback
        sys.stderr.write(f"demo_ioc: error: cannot start the p4p server on port {args.port}: {exc}; "
                         "pick another --port or 0\n")
        return 1

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    for key, value in client_env(server.conf()).items():
        print(f"{key}={value}")
    print("ready", *names.values(), flush=True)
    logger.info("serving %s (inputs at %.1f Hz) and %s (writable)", ", ".join([names["X1"], names["X2"]]),
                args.rate, names["Y"])

    interval = 1.0 / args.rate
    next_tick = time.monotonic()
    try:
        while not stop.is_set():
            x1, x2 = input_values(time.monotonic() - start, args.period)
            now = time.time()
            pvs[names["X1"]].post(x1, timestamp=now)
            pvs[names["X2"]].post(x2, timestamp=now)
            next_tick += interval
            # Sleep to the next tick (not a fixed interval), so the rate does not drift.
            stop.wait(max(0.0, next_tick - time.monotonic()))
    finally:
        server.stop()
        logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
