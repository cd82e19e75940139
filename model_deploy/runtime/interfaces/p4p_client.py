"""``get_method/put_method: p4p`` — a PVAccess client (p4p ``Context('pva')``)."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from p4p.client.raw import Context as RawContext
from p4p.client.thread import Cancelled, Context, Disconnected, Finished, RemoteError
from p4p.nt import NTNDArray

from .base import (
    ConnectionTracker,
    InterfaceError,
    MonitorCallback,
    SystemInterface,
    ValueDict,
    config_error,
    unwrap_value,
)
from .values import VariableSpec, coerce_value, from_p4p, parse_interface_config

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 2.0
MAX_FAILED_POPS = 64  # consecutive monitor.pop() errors in one drain before DirectSubscription stops it


class DirectSubscription:
    """A PV subscription whose updates are taken off the queue on p4p's own network thread.

    ``p4p.client.thread.Context.monitor`` hands every update to a worker-thread pool: a queue push, a
    thread wake-up and a GIL hand-over per update, 80-130 µs of CPU each on this machine. The pipeline's
    callback only stores the value and sets an Event, so it runs here directly, at 30-45 µs per update.
    ``deliver`` must therefore be quick and must not block.

    It also avoids p4p 4.3's lost-wakeup race in ``Context.monitor``, which assigns the subscription's
    handle only after the monitor started: an update arriving in between is dropped ("Lost Subscription
    update") and, since the server signals only when its queue goes from empty to non-empty, that PV never
    updates again. Here an early wake-up is remembered and the queue drained once the handle exists.
    """

    def __init__(self, context: Context, pv_name: str, deliver: Callable[[Any], None]):
        self.name = pv_name
        self._deliver = deliver
        self._lock = threading.Lock()  # one drain at a time; guards _monitor
        self._monitor: Any = None
        self._woken_early = False
        monitor = RawContext.monitor(context, pv_name, self._on_wakeup)
        with self._lock:
            self._monitor = monitor
            woken_early = self._woken_early
        if woken_early:
            self._on_wakeup()

    def _on_wakeup(self) -> None:
        # Called by p4p when the subscription's queue becomes non-empty: drain it completely, since the
        # next wake-up comes only after it was empty again.
        with self._lock:
            monitor = self._monitor
            if monitor is None:
                self._woken_early = True
                return
            failed_pops = 0
            while True:
                try:
                    update = monitor.pop()
                except Exception as exc:  # a value p4p could not unwrap (it is off the queue): report it
                    failed_pops += 1
                    if failed_pops > MAX_FAILED_POPS:  # pop itself is broken: never spin on it
                        logger.error("p4p: %s: giving up draining after %d failed pops: %s", self.name,
                                     failed_pops - 1, exc)
                        return
                    update = exc
                if update is None:
                    return
                try:
                    self._deliver(update)
                except Exception:
                    logger.exception("p4p: handling an update of %s failed", self.name)
                if isinstance(update, Finished):  # the last event of a subscription
                    return

    def close(self) -> None:
        with self._lock:
            monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.close()


def _valid_host_port(entry: str) -> bool:
    host, sep, port = entry.rpartition(":")
    if not sep:
        return bool(entry)
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def client_conf_from_config(
    config: Mapping[str, Any], context_conf: Mapping[str, Any] | None = None, *, field_prefix: str = ""
) -> dict[str, str]:
    """Context ``conf`` from the config's ``EPICS_PVA_*`` keys (explicit ``context_conf`` wins).

    ``EPICS_PVA_NAME_SERVERS`` is a space separated list of ``host[:port]`` reached over TCP,
    which is how clusters without UDP broadcast find IOCs.
    """
    conf: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(key, str) and key.startswith("EPICS_PVA") and value is not None:
            conf[key] = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    name_servers = conf.get("EPICS_PVA_NAME_SERVERS")
    if name_servers is not None:
        bad = [entry for entry in name_servers.split() if not _valid_host_port(entry)]
        if bad:
            raise config_error(
                [
                    f"{field_prefix}EPICS_PVA_NAME_SERVERS: invalid entries {bad}; "
                    "fix: give space separated host:port pairs, e.g. '10.0.0.5:5075 10.0.0.6:5075'"
                ]
            )
    if context_conf:
        conf.update({str(k): str(v) for k, v in context_conf.items()})
    return conf


def p4p_put_value(value: Any, spec: VariableSpec) -> Any:
    """What to hand to ``Context.put`` for this variable type."""
    coerced = coerce_value(unwrap_value(value), spec)
    if spec.type == "image":
        return NTNDArray().wrap(coerced)
    return coerced


class P4PInterface(SystemInterface):
    """PVAccess client. Only ``proto: pva`` is supported (use k2eg for Channel Access)."""

    method = "p4p"

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        context_conf: Mapping[str, Any] | None = None,
        useenv: bool = True,
        timeout: float | None = None,
        field_prefix: str = "",
    ):
        settings = parse_interface_config(config, method="p4p", allowed_protos=("pva",), field_prefix=field_prefix)
        self._specs: dict[str, VariableSpec] = settings.variables
        self.timeout: float = timeout or settings.timeout or DEFAULT_TIMEOUT
        self._conf = client_conf_from_config(config, context_conf, field_prefix=field_prefix)
        self._context: Context | None = Context("pva", conf=self._conf or None, useenv=useenv)
        self._tracker = ConnectionTracker(self._specs, interface="p4p")
        self._subscriptions: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- introspection ---------------------------------------------------------------------
    @property
    def variable_names(self) -> list[str]:
        return list(self._specs)

    @property
    def disconnect_counts(self) -> dict[str, int]:
        """How many times each monitored PV went from connected to disconnected."""
        return self._tracker.disconnect_counts

    @property
    def error_counts(self) -> dict[str, int]:
        return self._tracker.error_counts

    def connected(self) -> dict[str, bool]:
        """False until a get/put/monitor update succeeded for that PV."""
        return self._tracker.snapshot()

    def _spec(self, name: str) -> VariableSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise InterfaceError(
                f"p4p: unknown variable {name!r}; configured variables: {', '.join(self._specs)}", pvs=[name]
            ) from None

    def _ctx(self) -> Context:
        if self._context is None:
            raise InterfaceError("p4p: interface is closed")
        return self._context

    def _failure(self, spec: VariableSpec, error: BaseException, action: str) -> str:
        if isinstance(error, TimeoutError):
            self._tracker.mark_disconnected(spec.key, f"{action} timed out")
            return (
                f"PV {spec.name!r} (variable {spec.key!r}) did not answer the {action} within "
                f"{self.timeout:g} s: it does not exist or its server is unreachable "
                "(check the PV name and EPICS_PVA_NAME_SERVERS / EPICS_PVA_ADDR_LIST)"
            )
        if isinstance(error, RemoteError):
            return f"PV {spec.name!r} (variable {spec.key!r}): server refused the {action}: {error}"
        return f"PV {spec.name!r} (variable {spec.key!r}): {action} failed: {error}"

    # -- reads -----------------------------------------------------------------------------
    def get(self, name: str) -> tuple[str, ValueDict]:
        return self.get_many([name])[0]

    def get_many(self, names: Iterable[str]) -> list[tuple[str, ValueDict]]:
        """One ``Context.get`` for all names (requests go out in parallel)."""
        specs = [self._spec(name) for name in names]
        if not specs:
            return []
        raws = self._ctx().get([spec.name for spec in specs], timeout=self.timeout, throw=False)
        results, failures, failed_pvs = [], [], []
        for spec, raw in zip(specs, raws, strict=True):
            if isinstance(raw, BaseException):
                failures.append(self._failure(spec, raw, "get"))
                failed_pvs.append(spec.name)
                continue
            self._tracker.mark_connected(spec.key)
            results.append((spec.key, from_p4p(raw, spec)))
        if failures:
            raise InterfaceError("; ".join(failures), pvs=failed_pvs)
        return results

    def monitor(self, names: Iterable[str], callback: MonitorCallback) -> None:
        ctx = self._ctx()
        for name in names:
            spec = self._spec(name)
            first_value_seen = threading.Event()
            subscription = DirectSubscription(
                ctx, spec.name, functools.partial(self._on_update, spec, callback, first_value_seen)
            )
            with self._lock:
                previous = self._subscriptions.pop(spec.key, None)
                self._subscriptions[spec.key] = subscription
            if previous is not None:
                previous.close()

    def _on_update(
        self, spec: VariableSpec, callback: MonitorCallback, first_value_seen: threading.Event, update: Any
    ) -> None:
        # Runs on p4p's network thread (DirectSubscription): be quick, never raise, never hand exceptions on.
        if isinstance(update, Disconnected):
            # p4p reports every new subscription as Disconnected until it connects; that is not a loss
            # of a connection the initial get may already have established.
            if first_value_seen.is_set():
                self._tracker.mark_disconnected(spec.key, "server connection lost")
            return
        if isinstance(update, RemoteError):
            self._tracker.mark_error(spec.key, str(update))
            return
        if isinstance(update, (Cancelled, Finished)):
            self._tracker.mark_disconnected(spec.key, type(update).__name__.lower())
            return
        if isinstance(update, BaseException):
            self._tracker.mark_error(spec.key, repr(update))
            return
        try:
            value = from_p4p(update, spec)
        except Exception as exc:  # a malformed update must not kill the subscription
            self._tracker.mark_error(spec.key, f"cannot convert update: {exc}")
            return
        first_value_seen.set()
        self._tracker.mark_connected(spec.key)
        try:
            callback(spec.key, value)
        except Exception:
            logger.exception("p4p: monitor callback for %s raised", spec.key)

    # -- writes ----------------------------------------------------------------------------
    def _put_values(self, values: Mapping[str, Any]) -> tuple[list[VariableSpec], list[Any]]:
        specs, wire_values, problems, bad_pvs = [], [], [], []
        for name, value in values.items():
            spec = self._spec(name)
            try:
                wire_values.append(p4p_put_value(value, spec))
            except ValueError as exc:
                problems.append(str(exc))
                bad_pvs.append(spec.name)
                continue
            specs.append(spec)
        if problems:  # refuse the whole batch: a half-written output set is worse than none
            raise InterfaceError("; ".join(problems), pvs=bad_pvs)
        return specs, wire_values

    def put(self, name: str, value: Any) -> None:
        self.put_many({name: value})

    def put_many(self, values: Mapping[str, Any]) -> None:
        """One ``Context.put`` for all values; raises after all were attempted if any failed."""
        specs, wire_values = self._put_values(values)
        if not specs:
            return
        # get=False: skip the read-before-write round trip; we always send whole values.
        results = self._ctx().put(
            [spec.name for spec in specs], wire_values, timeout=self.timeout, throw=False, get=False
        )
        failures, failed_pvs = [], []
        for spec, result in zip(specs, results, strict=True):
            if isinstance(result, BaseException):
                failures.append(self._failure(spec, result, "put"))
                failed_pvs.append(spec.name)
            else:
                self._tracker.mark_connected(spec.key)
        if failures:
            raise InterfaceError("; ".join(failures), pvs=failed_pvs)

    def close(self) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions.values())
            self._subscriptions.clear()
            context, self._context = self._context, None
        for subscription in subscriptions:
            subscription.close()
        if context is not None:
            context.close()
