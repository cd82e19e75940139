"""``get_method/put_method: p4p_server`` — host the configured PVs in this process.

Outputs published by the model are read-only to PVAccess clients; inputs hosted here are
writable by clients and reach the pipeline through ``monitor()``.

Which PVs accept client writes:
  * a variable's ``mode`` (poly-lithic): ``in``/``inout`` writable, ``out`` read-only;
  * else ``role="input"`` (all writable) / ``role="output"`` (all read-only);
  * else (no role given) a PV becomes writable once the pipeline ``monitor()``s it, because
    only inputs are monitored. Until then client puts are rejected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from p4p.nt import NTNDArray, NTScalar
from p4p.server import Server
from p4p.server.thread import SharedPV

from .base import (
    InterfaceError,
    MonitorCallback,
    SystemInterface,
    ValueDict,
    config_error,
    unwrap_value,
)
from .values import ARRAY_TYPES, VariableSpec, coerce_value, from_p4p, initial_value, parse_interface_config

logger = logging.getLogger(__name__)

Role = Literal["input", "output"]


def _normative_type(spec: VariableSpec) -> Any:
    if spec.type == "image":
        return NTNDArray()
    if spec.type in ARRAY_TYPES:
        return NTScalar("ad")
    return NTScalar("d")


def server_conf_from_config(config: Mapping[str, Any]) -> dict[str, str]:
    """Server conf from the config's ``EPICS_PVA*`` keys and poly-lithic's ``port``."""
    conf = {
        key: str(value)
        for key, value in config.items()
        if isinstance(key, str) and key.startswith("EPICS_PVA") and value is not None
    }
    if config.get("port") is not None:
        conf["EPICS_PVAS_SERVER_PORT"] = str(config["port"])
    return conf


class _PutHandler:
    """SharedPV handler: every client put goes through the owning interface."""

    def __init__(self, owner: P4PServerInterface, spec: VariableSpec):
        self._owner, self._spec = owner, spec

    def put(self, pv: SharedPV, op: Any) -> None:
        self._owner._client_put(self._spec, pv, op)


class P4PServerInterface(SystemInterface):
    """Hosts one SharedPV per configured variable on a p4p ``Server``."""

    method = "p4p_server"

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        role: Role | None = None,
        isolate: bool = False,
        server_conf: Mapping[str, Any] | None = None,
        field_prefix: str = "",
    ):
        if role not in (None, "input", "output"):
            raise ValueError(f"role must be 'input', 'output' or None, not {role!r}")
        settings = parse_interface_config(
            config, method="p4p_server", allowed_protos=("pva",), field_prefix=field_prefix
        )
        self._specs: dict[str, VariableSpec] = settings.variables
        self.role = role
        self._lock = threading.Lock()
        self._callbacks: dict[str, MonitorCallback] = {}
        self._pvs = self._build_pvs(field_prefix)

        providers = [{self._specs[key].name: pv for key, pv in self._pvs.items()}]
        if isolate:
            self._server: Server | None = Server(providers=providers, isolate=True)
        else:
            conf = server_conf_from_config(config)
            conf.update({str(k): str(v) for k, v in (server_conf or {}).items()})
            self._server = Server(providers=providers, conf=conf or None, useenv=True)
            self._warn_if_port_moved(conf)
        logger.info(
            "p4p_server: hosting %d PVs on port %s",
            len(self._pvs),
            self._server.conf().get("EPICS_PVAS_SERVER_PORT"),
        )

    def _build_pvs(self, field_prefix: str) -> dict[str, SharedPV]:
        problems: list[str] = []
        seen: dict[str, str] = {}
        for key, spec in self._specs.items():
            if spec.name in seen:
                problems.append(
                    f"{field_prefix}variables.{key}.name: PV {spec.name!r} is also used by {seen[spec.name]!r}; "
                    "fix: give each hosted variable its own PV name"
                )
            seen[spec.name] = key
            if spec.type == "image" and spec.image_size is None:
                problems.append(
                    f"{field_prefix}variables.{key}.image_size: required for a hosted image; "
                    "fix: add image_size: {x: <columns>, y: <rows>}"
                )
        if problems:
            raise config_error(problems)

        pvs: dict[str, SharedPV] = {}
        for key, spec in self._specs.items():
            try:
                initial = initial_value(spec)
            except ValueError as exc:
                problems.append(
                    f"{field_prefix}variables.{key}.default: {exc}; fix: give a default matching type {spec.type}"
                )
                continue
            pvs[key] = SharedPV(
                handler=_PutHandler(self, spec), nt=_normative_type(spec), initial=initial, timestamp=time.time()
            )
        if problems:
            raise config_error(problems)
        return pvs

    def _warn_if_port_moved(self, requested: Mapping[str, str]) -> None:
        wanted = requested.get("EPICS_PVAS_SERVER_PORT") or requested.get("EPICS_PVA_SERVER_PORT")
        actual = self.server_conf().get("EPICS_PVAS_SERVER_PORT")
        if wanted and wanted != "0" and actual != wanted:
            logger.warning(
                "p4p_server: port %s is busy; serving on %s instead (name-server clients must use it)",
                wanted,
                actual,
            )

    # -- introspection ---------------------------------------------------------------------
    @property
    def variable_names(self) -> list[str]:
        return list(self._specs)

    def server_conf(self) -> dict[str, str]:
        """EPICS_PVA* settings with the real ports, for clients (``Context(conf=...)``)."""
        if self._server is None:
            raise InterfaceError("p4p_server: server is closed")
        return dict(self._server.conf())

    def connected(self) -> dict[str, bool]:
        running = self._server is not None
        return {key: running for key in self._specs}

    def is_writable(self, name: str) -> bool:
        spec = self._spec(name)
        if spec.mode is not None:
            return spec.mode in ("in", "inout")
        if self.role is not None:
            return self.role == "input"
        with self._lock:
            return spec.key in self._callbacks

    def _spec(self, name: str) -> VariableSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise InterfaceError(
                f"p4p_server: unknown variable {name!r}; hosted variables: {', '.join(self._specs)}", pvs=[name]
            ) from None

    # -- pipeline side ---------------------------------------------------------------------
    def get(self, name: str) -> tuple[str, ValueDict]:
        spec = self._spec(name)
        return spec.key, from_p4p(self._pvs[spec.key].current(), spec)

    def monitor(self, names: Iterable[str], callback: MonitorCallback) -> None:
        """Register ``callback``; it receives the current value now, like a PVA monitor does."""
        specs = [self._spec(name) for name in names]
        with self._lock:
            for spec in specs:
                self._callbacks[spec.key] = callback
        for spec in specs:
            self._notify(spec)

    def put(self, name: str, value: Any) -> None:
        spec = self._spec(name)
        try:
            coerced = coerce_value(unwrap_value(value), spec)
        except ValueError as exc:
            raise InterfaceError(str(exc), pvs=[spec.name]) from None
        self._pvs[spec.key].post(coerced, timestamp=time.time())
        self._notify(spec)

    def put_many(self, values: Mapping[str, Any]) -> None:
        problems, pvs = [], []
        for name, value in values.items():
            try:
                self.put(name, value)
            except InterfaceError as exc:
                problems.append(str(exc))
                pvs.extend(exc.pvs)
        if problems:
            raise InterfaceError("; ".join(problems), pvs=pvs)

    def _notify(self, spec: VariableSpec) -> None:
        with self._lock:
            callback = self._callbacks.get(spec.key)
        if callback is None:
            return
        try:
            callback(spec.key, from_p4p(self._pvs[spec.key].current(), spec))
        except Exception:
            logger.exception("p4p_server: monitor callback for %s raised", spec.key)

    # -- client side (runs on p4p's work-queue thread) --------------------------------------
    def _client_put(self, spec: VariableSpec, pv: SharedPV, op: Any) -> None:
        if not self.is_writable(spec.key):
            op.done(error=f"read-only: {spec.name} is published by the model deployment and cannot be written")
            return
        try:
            coerced = coerce_value(op.value(), spec)
        except Exception as exc:
            op.done(error=f"rejected: {exc}")
            return
        pv.post(coerced, timestamp=time.time())
        op.done()
        self._notify(spec)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
