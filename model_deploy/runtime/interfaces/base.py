"""The contract every system interface (getter/putter of control-system values) follows.

An interface is built from the plain ``config`` dict of the YAML's ``input_data.config`` or
``output_data_to.config``: ``variables: {key: {name, proto, type, image_size, default}}``.
The ``variables`` keys are the names the pipeline uses; ``name`` is the PV name on the wire.
"""

from __future__ import annotations

import abc
import importlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

ValueDict = dict[str, Any]
MonitorCallback = Callable[[str, ValueDict], None]


class InterfaceError(RuntimeError):
    """A control-system operation failed: PV missing/unreachable, put rejected, bad value.

    ``pvs`` names the PVs involved so callers (and logs) can say exactly what broke.
    """

    def __init__(self, message: str, *, pvs: Iterable[str] = ()):
        super().__init__(message)
        self.pvs: list[str] = list(pvs)


def config_error(problems: list[str]) -> Exception:
    """Build the project's ConfigError lazily (errors.py is owned by the config module)."""
    from model_deploy.runtime.errors import ConfigError

    return ConfigError(problems)


class SystemInterface(abc.ABC):
    """Get, put and monitor control-system variables by their pipeline key."""

    method: ClassVar[str] = ""

    @property
    @abc.abstractmethod
    def variable_names(self) -> list[str]:
        """The configured variable keys, in config order."""

    @abc.abstractmethod
    def get(self, name: str) -> tuple[str, ValueDict]:
        """Current value of one variable: ``(name, {"value": ..., "timestamp"?, "severity"?})``."""

    def get_many(self, names: Iterable[str]) -> list[tuple[str, ValueDict]]:
        return [self.get(name) for name in names]

    @abc.abstractmethod
    def monitor(self, names: Iterable[str], callback: MonitorCallback) -> None:
        """Call ``callback(name, value_dict)`` on every update of ``names``.

        The callback runs on the client library's thread: it must be cheap and must not block.
        Disconnections and server errors never reach the callback; see ``connected()``.
        """

    @abc.abstractmethod
    def put(self, name: str, value: Any) -> None:
        """Write one variable. ``value`` may be a raw value or a ``{"value": ...}`` dict."""

    def put_many(self, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            self.put(name, value)

    @abc.abstractmethod
    def connected(self) -> dict[str, bool]:
        """Per-variable connection state (for /readyz)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release sockets/threads. Safe to call more than once."""

    def __enter__(self) -> SystemInterface:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def unwrap_value(value: Any) -> Any:
    """Accept both raw values and value dicts (poly-lithic putters receive ``{"value": x}``)."""
    if isinstance(value, Mapping) and "value" in value:
        return value["value"]
    return value


class ConnectionTracker:
    """Thread-safe per-variable connection state that logs transitions once, not every event.

    Monitor callbacks fire from client threads, so all state changes go through one lock.
    """

    def __init__(self, names: Iterable[str], *, interface: str):
        self._lock = threading.Lock()
        self._interface = interface
        self._connected: dict[str, bool] = {name: False for name in names}
        self._ever_connected: set[str] = set()
        self._disconnects: dict[str, int] = {name: 0 for name in self._connected}
        self._errors: dict[str, int] = {name: 0 for name in self._connected}
        self._last_error: dict[str, str] = {}

    def mark_connected(self, name: str) -> None:
        with self._lock:
            was = self._connected.get(name, False)
            self._connected[name] = True
            first = name not in self._ever_connected
            self._ever_connected.add(name)
            self._last_error.pop(name, None)
        if not was and not first:
            logger.info("%s: %s reconnected", self._interface, name)

    def mark_disconnected(self, name: str, reason: str) -> None:
        with self._lock:
            was = self._connected.get(name, False)
            self._connected[name] = False
            if was:
                self._disconnects[name] = self._disconnects.get(name, 0) + 1
        if was:
            logger.warning("%s: %s disconnected (%s)", self._interface, name, reason)

    def mark_error(self, name: str, message: str) -> None:
        """Count a server-side error; log it only when the message changes."""
        with self._lock:
            self._errors[name] = self._errors.get(name, 0) + 1
            repeated = self._last_error.get(name) == message
            self._last_error[name] = message
        if not repeated:
            logger.error("%s: %s error: %s", self._interface, name, message)

    def snapshot(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._connected)

    @property
    def disconnect_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._disconnects)

    @property
    def error_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)


# Lazy "module:Class" paths so that importing the registry never imports p4p or k2eg.
_INTERFACES: dict[str, str] = {
    "p4p": "model_deploy.runtime.interfaces.p4p_client:P4PInterface",
    "p4p_server": "model_deploy.runtime.interfaces.p4p_server:P4PServerInterface",
    "k2eg": "model_deploy.runtime.interfaces.k2eg:K2EGInterface",
}


def available_methods() -> list[str]:
    return sorted(_INTERFACES)


def interface_class(method: str, *, field: str = "get_method/put_method") -> type[SystemInterface]:
    if not isinstance(method, str) or method not in _INTERFACES:
        raise config_error(
            [
                f"{field}: unknown interface method {method!r}; "
                f"use one of: {', '.join(available_methods())}"
            ]
        )
    module_name, class_name = _INTERFACES[method].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_interface(method: str, config: Mapping[str, Any], **options: Any) -> SystemInterface:
    """Build the interface named by ``get_method``/``put_method`` from its ``config`` dict.

    ``options`` are passed to the interface constructor, e.g. ``role="input"`` for
    ``p4p_server``, ``context_conf=...`` for ``p4p``, ``field_prefix="input_data.config."``
    so config errors name the full YAML path.
    """
    field = options.pop("method_field", "get_method/put_method")
    return interface_class(method, field=field)(config, **options)
