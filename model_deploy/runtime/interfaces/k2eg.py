"""``get_method/put_method: k2eg`` — EPICS (pva and ca) through the k2eg Kafka gateway.

Uses the ``k2eg`` PyPI client (``k2eg.dml``). Its broker settings come from
``<K2EG_PYTHON_CONFIGURATION_PATH_FOLDER>/<environment_id>.ini`` (keys ``kafka_broker_url``,
``k2eg_cmd_topic`` in ``[DEFAULT]``). Config keys besides ``variables``:

  K2EG_PYTHON_CONFIGURATION_PATH_FOLDER  folder of the .ini (else the env var of that name)
  environment_id   .ini file name without extension (default ``env``, as poly-lithic)
  app_name         Kafka client/app name; replies come on ``<app_name>-reply``
                   (default env ``K2EG_APP_NAME``, else poly-lithic's ``app-three``).
                   Give each deployment its own: Kafka fences consumers sharing a name.
  group_name       Kafka consumer group (default: app_name)
  timeout          seconds per get/put/monitor request (default 5)
"""

from __future__ import annotations

import configparser
import importlib
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    ConnectionTracker,
    InterfaceError,
    MonitorCallback,
    SystemInterface,
    ValueDict,
    config_error,
    unwrap_value,
)
from .values import VariableSpec, coerce_value, from_k2eg, parse_interface_config

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
DEFAULT_ENVIRONMENT_ID = "env"
DEFAULT_APP_NAME = "app-three"
CONFIG_FOLDER_KEY = "K2EG_PYTHON_CONFIGURATION_PATH_FOLDER"
_ENV_LOCK = threading.Lock()  # the k2eg client reads its config folder from os.environ


def _import_k2eg() -> Any:
    try:
        return importlib.import_module("k2eg")
    except ImportError as exc:  # pragma: no cover - depends on the image
        raise config_error(
            [f"get_method/put_method: k2eg needs the 'k2eg' package ({exc}); fix: pip install k2eg"]
        ) from None


def resolve_k2eg_settings(config: Mapping[str, Any], field_prefix: str = "") -> dict[str, Any]:
    """Validate the k2eg-specific keys and the broker .ini before any Kafka connection."""
    problems: list[str] = []
    folder = config.get(CONFIG_FOLDER_KEY) or os.environ.get(CONFIG_FOLDER_KEY)
    environment_id = str(config.get("environment_id") or DEFAULT_ENVIRONMENT_ID)
    app_name = str(config.get("app_name") or os.environ.get("K2EG_APP_NAME") or DEFAULT_APP_NAME)
    group_name = config.get("group_name")
    if not folder:
        problems.append(
            f"{field_prefix}{CONFIG_FOLDER_KEY}: not set; fix: set it (config key or environment variable) "
            f"to the folder holding {environment_id}.ini"
        )
    else:
        ini = Path(str(folder)) / f"{environment_id}.ini"
        parser = configparser.ConfigParser()
        if not ini.is_file():
            problems.append(
                f"{field_prefix}{CONFIG_FOLDER_KEY}: {ini} does not exist; fix: create it with "
                "[DEFAULT] kafka_broker_url=<host:port> and k2eg_cmd_topic=<topic>, or set environment_id"
            )
        else:
            try:
                parser.read(ini)
            except configparser.Error as exc:
                problems.append(f"{field_prefix}{CONFIG_FOLDER_KEY}: {ini} is not a valid .ini file ({exc})")
            else:
                for option in ("kafka_broker_url", "k2eg_cmd_topic"):
                    if not parser.has_option("DEFAULT", option):
                        problems.append(
                            f"{field_prefix}{CONFIG_FOLDER_KEY}: {ini} lacks '{option}' in [DEFAULT]; fix: add it"
                        )
    if problems:
        raise config_error(problems)
    return {
        "folder": str(folder),
        "environment_id": environment_id,
        "app_name": app_name,
        "group_name": None if group_name is None else str(group_name),
    }


def k2eg_put_payload(value: Any, spec: VariableSpec) -> Any:
    """k2eg ``put`` wants a MessagePackSerializable: Scalar for numbers, Vector for arrays."""
    from k2eg.serialization import Scalar, Vector

    coerced = coerce_value(unwrap_value(value), spec)
    if isinstance(coerced, np.ndarray):
        # Images go out flattened (row-major), the layout of a CA waveform image.
        return Vector("value", coerced.ravel().tolist())
    return Scalar("value", coerced)


class K2EGInterface(SystemInterface):
    method = "k2eg"

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        timeout: float | None = None,
        field_prefix: str = "",
    ):
        settings = parse_interface_config(config, method="k2eg", field_prefix=field_prefix)
        self._specs: dict[str, VariableSpec] = settings.variables
        self.timeout: float = timeout or settings.timeout or DEFAULT_TIMEOUT
        self._by_wire_name = {spec.name: spec for spec in self._specs.values()}
        self._tracker = ConnectionTracker(self._specs, interface="k2eg")
        self._last_stamp: dict[str, float] = {}
        self._stamp_lock = threading.Lock()
        self.settings = resolve_k2eg_settings(config, field_prefix)
        k2eg = _import_k2eg()
        self._errors = (k2eg.OperationTimeout, k2eg.OperationError)
        self._client = self._connect(k2eg)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="k2eg-io")

    def _connect(self, k2eg: Any) -> Any:
        with _ENV_LOCK:
            previous = os.environ.get(CONFIG_FOLDER_KEY)
            os.environ[CONFIG_FOLDER_KEY] = self.settings["folder"]
            try:
                return k2eg.dml(
                    self.settings["environment_id"], self.settings["app_name"], self.settings["group_name"]
                )
            except (TimeoutError, ValueError) as exc:
                raise InterfaceError(
                    f"k2eg: cannot start client (environment {self.settings['environment_id']!r}, "
                    f"app {self.settings['app_name']!r}): {exc}; is Kafka reachable?"
                ) from None
            finally:
                if previous is None:
                    os.environ.pop(CONFIG_FOLDER_KEY, None)
                else:
                    os.environ[CONFIG_FOLDER_KEY] = previous

    # -- introspection ---------------------------------------------------------------------
    @property
    def variable_names(self) -> list[str]:
        return list(self._specs)

    def connected(self) -> dict[str, bool]:
        """False until a get/put/monitor event succeeded; False again after a failure."""
        return self._tracker.snapshot()

    @property
    def _live(self) -> Any:
        if self._client is None:
            raise InterfaceError("k2eg: interface is closed")
        return self._client

    def _spec(self, name: str) -> VariableSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise InterfaceError(
                f"k2eg: unknown variable {name!r}; configured variables: {', '.join(self._specs)}", pvs=[name]
            ) from None

    def _failure(self, spec: VariableSpec, exc: BaseException, action: str) -> InterfaceError:
        timeout_cls, error_cls = self._errors
        self._tracker.mark_disconnected(spec.key, f"{action} failed")
        if isinstance(exc, timeout_cls):
            message = (
                f"k2eg: no reply to {action} of {spec.uri} (variable {spec.key!r}) within {self.timeout:g} s; "
                "is the k2eg gateway running and the PV name right?"
            )
        elif isinstance(exc, error_cls):
            message = (
                f"k2eg: gateway refused {action} of {spec.uri} (variable {spec.key!r}): "
                f"error {getattr(exc, 'error', '?')}: {exc}"
            )
        else:
            message = f"k2eg: {action} of {spec.uri} (variable {spec.key!r}) failed: {exc}"
        return InterfaceError(message, pvs=[spec.name])

    # -- reads -----------------------------------------------------------------------------
    def get(self, name: str) -> tuple[str, ValueDict]:
        spec = self._spec(name)
        try:
            payload = self._live.get(spec.uri, timeout=self.timeout)
        except (*self._errors, ValueError) as exc:
            raise self._failure(spec, exc, "get") from None
        self._tracker.mark_connected(spec.key)
        return spec.key, from_k2eg(payload, spec)

    def get_many(self, names: Iterable[str]) -> list[tuple[str, ValueDict]]:
        """Gets run concurrently (k2eg has no multi-get); raises listing every failed PV."""
        names = list(names)
        for name in names:
            self._spec(name)
        futures = [self._pool.submit(self.get, name) for name in names]
        results, failures = [], []
        for future in futures:
            try:
                results.append(future.result())
            except InterfaceError as exc:
                failures.append(exc)
        if failures:
            raise InterfaceError("; ".join(map(str, failures)), pvs=[pv for exc in failures for pv in exc.pvs])
        return results

    def monitor(self, names: Iterable[str], callback: MonitorCallback) -> None:
        specs = [self._spec(name) for name in names]
        if not specs:
            return

        def on_event(pv_name: str, payload: Any) -> None:
            self._on_event(pv_name, payload, callback)

        try:
            self._live.monitor_many([spec.uri for spec in specs], on_event, timeout=self.timeout)
        except (*self._errors, ValueError) as exc:
            first = specs[0] if len(specs) == 1 else None
            if first is not None:
                raise self._failure(first, exc, "monitor") from None
            raise InterfaceError(
                f"k2eg: monitor of {', '.join(s.uri for s in specs)} failed: {exc}", pvs=[s.name for s in specs]
            ) from None

    def _on_event(self, pv_name: str, payload: Any, callback: MonitorCallback) -> None:
        # Runs on the k2eg client's thread pool (10 workers): events of one PV may be handled
        # out of order, so drop any update older than the last one delivered for that PV.
        spec = self._by_wire_name.get(pv_name)
        if spec is None:
            logger.debug("k2eg: event for unconfigured PV %s ignored", pv_name)
            return
        try:
            value = from_k2eg(payload, spec)
        except Exception as exc:
            self._tracker.mark_error(spec.key, f"cannot decode event: {exc}")
            return
        stamp = value.get("timestamp")
        if stamp is not None:
            with self._stamp_lock:
                if stamp < self._last_stamp.get(spec.key, float("-inf")):
                    logger.debug("k2eg: stale event for %s dropped", spec.key)
                    return
                self._last_stamp[spec.key] = stamp
        self._tracker.mark_connected(spec.key)
        try:
            callback(spec.key, value)
        except Exception:
            logger.exception("k2eg: monitor callback for %s raised", spec.key)

    # -- writes ----------------------------------------------------------------------------
    def _payloads(self, values: Mapping[str, Any]) -> dict[str, tuple[VariableSpec, Any]]:
        """Convert every value before sending any: a half-written output set is worse than none."""
        payloads, problems, bad_pvs = {}, [], []
        for name, value in values.items():
            spec = self._spec(name)
            try:
                payloads[name] = (spec, k2eg_put_payload(value, spec))
            except ValueError as exc:
                problems.append(str(exc))
                bad_pvs.append(spec.name)
        if problems:
            raise InterfaceError("; ".join(problems), pvs=bad_pvs)
        return payloads

    def _send(self, spec: VariableSpec, payload: Any) -> None:
        try:
            self._live.put(spec.uri, payload, timeout=self.timeout)
        except (*self._errors, ValueError) as exc:
            raise self._failure(spec, exc, "put") from None
        self._tracker.mark_connected(spec.key)

    def put(self, name: str, value: Any) -> None:
        spec, payload = self._payloads({name: value})[name]
        self._send(spec, payload)

    def put_many(self, values: Mapping[str, Any]) -> None:
        """Puts run concurrently; raises after all were attempted if any failed."""
        payloads = self._payloads(values)
        futures = [self._pool.submit(self._send, spec, payload) for spec, payload in payloads.values()]
        failures = []
        for future in futures:
            try:
                future.result()
            except InterfaceError as exc:
                failures.append(exc)
        if failures:
            raise InterfaceError("; ".join(map(str, failures)), pvs=[pv for exc in failures for pv in exc.pvs])

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._pool.shutdown(wait=True)
        client.close()
