"""The event-driven runtime loop: monitor callbacks -> coalesce -> transform -> evaluate -> put.

Threading model
  * Monitor callbacks run on the control-system client's thread. They only store the latest value
    per input in ``_pending`` under a lock and set an Event: they never block, log or evaluate.
  * ONE worker thread waits on the Event, swaps ``_pending`` out (latest value wins, so a burst of
    updates costs one evaluation), feeds the input transformer, evaluates the model, feeds the output
    transformer and, only when publishing, hands the outputs to the writer thread.
  * The writer thread (``LatestOutputWriter``) writes one output set at a time. While a set waits
    behind the write in flight, the worker holds back and updates keep coalescing: evaluations then
    track what the control system can take, and the set written next is computed from the newest
    inputs instead of being superseded.

Decisions
  * Non-finite (NaN/inf) model inputs: the evaluation is skipped (garbage in is never fed to the
    model), ``non_finite_inputs_total`` is incremented and /readyz lists the inputs under
    ``warnings``; the loop continues and recovers as soon as a finite value arrives.
  * Without ``publish`` the output interface is not even built: a dry run must not host or write
    any PV (a p4p_server output would otherwise announce PV names a production deployment owns).
  * The model is evaluated only once every input-transformer output has a value (a Compound
    transformer may produce a partial dict before all of its parts have data).
  * Errors are counted per stage (get, transform_in, model, transform_out, put) and logged at most
    once per ``ERROR_LOG_INTERVAL`` seconds per stage, so a kHz failure does not flood the log.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

from model_deploy.runtime.errors import PipelineError
from model_deploy.runtime.interfaces import build_interface
from model_deploy.runtime.metrics import STAGES, HealthReport, RuntimeMetrics, readiness_report
from model_deploy.runtime.transformers import build_transformer

logger = logging.getLogger(__name__)

ERROR_LOG_INTERVAL = 10.0  # seconds between two log lines about the same recurring problem
IDLE_WAKE_INTERVAL = 1.0  # the worker re-checks the stop flag at least this often


class ThrottledLog:
    """Log a recurring message at most once per interval, counting what was suppressed.

    Only the worker thread uses it, so no lock is needed.
    """

    def __init__(self, log: logging.Logger, level: int, interval: float = ERROR_LOG_INTERVAL):
        self._log = log
        self._level = level
        self._interval = interval
        self._last = -math.inf
        self._suppressed = 0

    def __call__(self, message: str, *args: Any, exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d similar messages suppressed in the last %.0fs)"
            args = (*args, self._suppressed, now - self._last)
        self._last = now
        self._suppressed = 0
        self._log.log(self._level, message, *args, exc_info=exc_info)


def non_finite_keys(values: Mapping[str, Any]) -> list[str]:
    """Keys whose value is NaN/inf (scalars) or contains NaN/inf (arrays). Non-numbers are ignored."""
    bad = []
    for key, value in values.items():
        if isinstance(value, float):  # fast path: the common case is a python float
            if not math.isfinite(value):
                bad.append(key)
        elif isinstance(value, (int, bool, str, bytes)) or value is None:
            continue
        else:
            try:
                if not np.isfinite(value).all():
                    bad.append(key)
            except TypeError:  # non-numeric payloads (strings, objects) are the model's business
                continue
    return bad


def interface_settings(spec: Any) -> dict[str, Any]:
    """The plain-dict config an interface takes, from a config-model interface spec."""
    return spec.model_dump(exclude_none=True, exclude={"method"})


def _interface_options(config: Any, side: str, role: str | None) -> dict[str, Any]:
    """Constructor options: the YAML path for error messages, and the p4p_server PV role."""
    spec = getattr(config, side)
    if getattr(config, "source_format", "legacy") == "modules":
        section = f"modules.{getattr(config.module_names, side)}"
        method_field = f"{section}.type"
    else:
        section = "input_data" if side == "input" else "output_data_to"
        method_field = f"{section}.{'get_method' if side == 'input' else 'put_method'}"
    options: dict[str, Any] = {"field_prefix": f"{section}.config.", "method_field": method_field}
    method = spec.method
    if method == "p4p_server":
        # Hosted inputs accept client writes, hosted outputs are read-only. A shared server
        # (role None) makes exactly the monitored PVs writable, i.e. the inputs.
        options["role"] = role
    return options


def build_interfaces(config: Any, publish: bool, getter: Any = None, putter: Any = None) -> tuple[Any, Any]:
    """(getter, putter) for the config; the putter is None when not publishing.

    A dry run builds no output interface at all: hosting output PVs with p4p_server would already
    announce names that a production deployment of the same model owns.
    """
    if getattr(config, "shared_interface", False) and getter is None:
        # poly-lithic graph: one interface module reads and writes, so build ONE interface.
        settings = interface_settings(config.input)
        if publish:
            settings["variables"] = {**settings["variables"], **interface_settings(config.output)["variables"]}
        getter = build_interface(config.input.method, settings, **_interface_options(config, "input", None))
        return getter, (putter if putter is not None else getter if publish else None)
    if getter is None:
        getter = build_interface(config.input.method, interface_settings(config.input),
                                 **_interface_options(config, "input", "input"))
    if putter is None and publish:
        try:
            putter = build_interface(config.output.method, interface_settings(config.output),
                                     **_interface_options(config, "output", "output"))
        except BaseException:
            getter.close()
            raise
    return getter, putter


class LatestOutputWriter:
    """Writes output sets on a thread of its own, so evaluations never wait on a control-system round trip.

    While a write is in flight, a newer output set replaces the one waiting (latest wins), as input
    updates coalesce: the control system always ends with the newest outputs, and a slow IOC cannot build
    a backlog in the runtime. ``wait_for_slot`` lets the evaluating thread hold back while a set is
    already waiting: evaluating faster than the outputs can be written only produces sets that are
    thrown away, and takes the GIL from the threads completing the writes.
    """

    def __init__(
        self,
        put_many: Callable[[dict[str, Any]], None],
        on_written: Callable[[], None],
        on_error: Callable[[BaseException], None],
        on_superseded: Callable[[], None],
    ):
        self._put_many = put_many
        self._on_written = on_written
        self._on_error = on_error
        self._on_superseded = on_superseded
        self._lock = threading.Lock()
        self._waiting: dict[str, Any] | None = None
        self._wake = threading.Event()
        self._slot_free = threading.Event()  # set while no output set is waiting to be written
        self._slot_free.set()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="pipeline-writer", daemon=True)
        self._thread.start()

    def submit(self, outputs: dict[str, Any]) -> None:
        with self._lock:
            if self._waiting is not None:
                self._on_superseded()
            self._waiting = outputs
            self._slot_free.clear()
            self._wake.set()

    def wait_for_slot(self, timeout: float) -> bool:
        """Wait until no output set is waiting (one may still be in flight); False on timeout."""
        return self._slot_free.wait(timeout)

    def close(self, timeout: float) -> None:
        """Write what is waiting, then stop."""
        with self._lock:
            self._closing = True
            self._wake.set()
            self._slot_free.set()  # nobody should wait for a writer that is going away
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                outputs, self._waiting = self._waiting, None
                self._wake.clear()
                self._slot_free.set()
                closing = self._closing
            if outputs is not None:
                try:
                    self._put_many(outputs)
                except Exception as exc:  # counted and logged by the pipeline; the writer keeps going
                    self._on_error(exc)
                else:
                    self._on_written()
            if closing:
                return


class Pipeline:
    """One deployment's runtime loop. See the module docstring for the threading model.

    Args:
        config: the normalised ``PipelineConfig`` (``load_config``).
        model: a ``ModelAdapter`` (anything with ``evaluate(dict) -> dict``).
        publish: write outputs to the control system; False is a dry run (no output interface).
        metrics: where counters/histograms go (one ``RuntimeMetrics`` per pipeline).
        getter, putter: ready-made ``SystemInterface``s (tests, embedding); built from the config
            with ``build_interface`` when None.

    Use ``start()`` + ``stop()`` or ``run_forever(stop_event)``; ``step_once()`` for ``--once``.
    """

    def __init__(
        self,
        config: Any,
        model: Any,
        *,
        publish: bool,
        metrics: RuntimeMetrics,
        getter: Any = None,
        putter: Any = None,
    ):
        self.config = config
        self.model = model
        self.publish = publish
        self.metrics = metrics
        self._input_transformer = build_transformer(config.input_transform)
        self._output_transformer = build_transformer(config.output_transform)
        self._input_names: list[str] = list(config.input.variables)
        self._required_inputs = frozenset(self._input_transformer.output_names)
        rate = getattr(config.deployment, "rate", None)
        self._min_interval = 1.0 / rate if rate else 0.0

        self._getter, self._putter = build_interfaces(config, publish, getter, putter)

        # Shared between the callback thread(s) and the worker: guarded by _lock.
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._received = 0
        self._coalesced = 0
        self._wake = threading.Event()

        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._writer: LatestOutputWriter | None = None  # only while running; step_once writes inline
        self._started = False
        self._closed = False
        self._last_evaluation = -math.inf
        self._evaluations = 0
        self._non_finite: tuple[str, ...] = ()
        self.last_inputs: dict[str, Any] | None = None
        self.last_model_outputs: dict[str, Any] | None = None
        self.last_outputs: dict[str, Any] | None = None

        # Resolve metric children once: the hot path then only calls inc()/observe().
        self._errors = {stage: metrics.error_counter(stage) for stage in STAGES}
        self._error_logs = {stage: ThrottledLog(logger, logging.ERROR) for stage in STAGES}
        self._non_finite_log = ThrottledLog(logger, logging.WARNING)
        self._dry_run_log = ThrottledLog(logger, logging.INFO)
        metrics.inputs_configured.set(len(self._input_names))
        metrics.inputs_connected.set_function(lambda: sum(self.connections().values()))

    # ------------------------------------------------------------------ callback side (hot)
    def on_update(self, name: str, value: dict[str, Any]) -> None:
        """Monitor callback: remember the latest value and wake the worker. Never blocks for long."""
        with self._lock:
            if name in self._pending:
                self._coalesced += 1
            self._pending[name] = value
            self._received += 1
            if not self._wake.is_set():  # the worker clears it under this lock: no lost wake-up
                self._wake.set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker thread; it fetches initial values, subscribes, then loops."""
        if self._started:
            return
        self._started = True
        if self.publish:
            self._writer = LatestOutputWriter(
                self._putter.put_many,
                on_written=self._outputs_written,
                on_error=self._put_failed,
                on_superseded=self.metrics.superseded_outputs.inc,
            )
        self._worker = threading.Thread(target=self._run, name="pipeline-worker", daemon=True)
        self._worker.start()

    def run_forever(self, stop_event: threading.Event | None = None) -> None:
        """Run until ``stop_event`` is set (or stop() is called), then stop gracefully."""
        self.start()
        stop_event = stop_event or self._stopping
        while not stop_event.wait(IDLE_WAKE_INTERVAL):
            if self._stopping.is_set() or not self.worker_alive():
                break
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop monitors, let the current evaluation finish, close the interfaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._wake.set()
        shared = self._putter is self._getter
        if not shared:
            self._close_quietly(self._getter, "input")  # no more callbacks from here on
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout)  # the evaluation in progress finishes (and is published)
            if self._worker.is_alive():
                logger.warning("pipeline worker did not finish within %.0fs; exiting anyway", timeout)
        if self._writer is not None:
            self._writer.close(timeout)  # the last evaluation's outputs still reach the control system
        if shared:
            self._close_quietly(self._getter, "input/output")
        elif self._putter is not None:
            self._close_quietly(self._putter, "output")
        logger.info("pipeline stopped after %d evaluations", self._evaluations)

    @staticmethod
    def _close_quietly(interface: Any, role: str) -> None:
        try:
            interface.close()
        except Exception as exc:  # closing is best effort during shutdown
            logger.warning("closing the %s interface failed: %s", role, exc)

    # ------------------------------------------------------------------ one-shot
    def step_once(self) -> dict[str, Any]:
        """get_many -> transform -> evaluate -> transform -> (put when publishing), once.

        Returns the output values keyed by output PV. Raises PipelineError naming the failed stage.
        """
        try:
            values = dict(self._getter.get_many(self._input_names))
        except Exception as exc:
            raise self._count(_stage_error("get", exc)) from exc
        evaluations = self._evaluations
        outputs = self._process(values)
        if outputs is None and self._evaluations > evaluations:
            produced = ", ".join(sorted(self.last_model_outputs or {})) or "nothing"
            raise PipelineError(
                f"the output transformer produced no values from the model outputs ({produced}); "
                f"it needs {', '.join(self._output_transformer.input_names)}",
                stage="transform_out",
            )
        if outputs is None:
            missing = sorted(self._required_inputs - set((self.last_inputs or {})))
            if self._non_finite:
                raise PipelineError(
                    f"inputs are not finite: {', '.join(self._non_finite)}; no evaluation done",
                    stage="transform_in",
                )
            raise PipelineError(
                f"inputs incomplete after reading all PVs (missing {', '.join(missing) or 'values'})",
                stage="transform_in",
            )
        return outputs

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        try:
            self._fetch_initial_values()
            if not self._stopping.is_set():
                self._getter.monitor(self._input_names, self.on_update)
            while not self._stopping.is_set():
                self._wake.wait(IDLE_WAKE_INTERVAL)
                if self._stopping.is_set():
                    break
                if not self._wake.is_set():
                    continue
                self._wait_for_output_slot()
                self._respect_rate_limit()
                batch = self._take_pending()
                if batch:
                    self._process_logged(batch)
        except Exception:  # anything escaping here is a bug: log it, liveness then turns 503
            logger.exception("pipeline worker crashed")
            raise

    def _fetch_initial_values(self) -> None:
        try:
            initial = self._getter.get_many(self._input_names)
        except Exception as exc:
            # Not fatal: the monitors deliver each PV's value once it connects.
            self._errors["get"].inc()
            logger.warning("initial read of the inputs failed (%s); waiting for monitor updates", exc)
            return
        with self._lock:
            for name, value in initial:
                self._pending.setdefault(name, value)  # a monitor value may already be newer
            self._wake.set()

    def _wait_for_output_slot(self) -> None:
        # Back-pressure: while an output set is still waiting behind a write in flight, updates keep
        # coalescing in _pending instead of being evaluated into a set that would be superseded.
        while self._writer is not None and not self._stopping.is_set():
            if self._writer.wait_for_slot(IDLE_WAKE_INTERVAL) or not self._writer.alive():
                return

    def _respect_rate_limit(self) -> None:
        if self._min_interval:
            remaining = self._last_evaluation + self._min_interval - time.monotonic()
            if remaining > 0:
                self._stopping.wait(remaining)  # updates keep coalescing in _pending meanwhile

    def _take_pending(self) -> dict[str, Any]:
        with self._lock:
            batch, self._pending = self._pending, {}
            received, coalesced = self._received, self._coalesced
            self._received = self._coalesced = 0
            self._wake.clear()
        if received:
            self.metrics.updates_received.inc(received)
        if coalesced:
            self.metrics.coalesced_updates.inc(coalesced)
        return batch

    def _process_logged(self, batch: dict[str, Any]) -> None:
        try:
            self._process(batch)
        except PipelineError as exc:
            self._error_logs[exc.stage]("pipeline stage %s failed: %s", exc.stage, exc, exc_info=exc.__cause__)

    def _process(self, batch: Mapping[str, Any]) -> dict[str, Any] | None:
        """Feed one coalesced batch through the pipeline; returns the output values or None."""
        try:
            self._input_transformer.handle_many(batch)
            inputs = self._input_transformer.take() if self._input_transformer.updated else None
        except Exception as exc:
            raise self._count(_stage_error("transform_in", exc)) from exc
        if inputs is None:
            return None
        self.last_inputs = inputs
        if not self._required_inputs.issubset(inputs):
            return None  # e.g. a Compound transformer whose image part has no data yet
        bad = non_finite_keys(inputs)
        if bad:
            self._non_finite = tuple(bad)
            self.metrics.non_finite_inputs.inc()
            self._non_finite_log("skipping evaluation: model inputs not finite: %s", ", ".join(bad))
            return None
        self._non_finite = ()

        started = time.perf_counter()
        try:
            model_outputs = self.model.evaluate(inputs)
        except Exception as exc:
            raise self._count(_stage_error("model", exc)) from exc
        finally:
            self._last_evaluation = time.monotonic()
        self.metrics.evaluation_duration.observe(time.perf_counter() - started)
        self.metrics.evaluations.inc()
        self._evaluations += 1
        self.last_model_outputs = model_outputs

        try:
            self._output_transformer.handle_many(model_outputs)
            outputs = self._output_transformer.take() if self._output_transformer.updated else None
        except Exception as exc:
            raise self._count(_stage_error("transform_out", exc)) from exc
        if outputs is None:
            return None
        self.last_outputs = outputs
        if self._writer is not None:
            self._writer.submit(outputs)
        elif self.publish:
            try:
                self._putter.put_many(outputs)
            except Exception as exc:
                raise self._count(_stage_error("put", exc)) from exc
            self._outputs_written()
        else:
            self._dry_run_log("dry run (no --publish): not writing %s", _summarise(outputs))
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("outputs: %s", _summarise(outputs))
            self._outputs_written()
        return outputs

    def _outputs_written(self) -> None:
        self.metrics.last_output_timestamp.set(time.time())

    def _put_failed(self, exc: BaseException) -> None:
        error = self._count(_stage_error("put", exc))
        self._error_logs["put"]("pipeline stage put failed: %s", error, exc_info=exc)

    def _count(self, error: PipelineError) -> PipelineError:
        self._errors[error.stage].inc()
        return error

    # ------------------------------------------------------------------ health
    def connections(self) -> dict[str, bool]:
        """Connection state per input PV (all True for interfaces that cannot tell)."""
        connected = getattr(self._getter, "connected", None)
        if connected is None:
            return {name: True for name in self._input_names}
        state = connected()
        if isinstance(state, bool):
            return {name: state for name in self._input_names}
        return {name: bool(state.get(name, False)) for name in self._input_names}

    def worker_alive(self) -> bool:
        writer_ok = self._writer is None or self._writer.alive() or self._closed
        return self._worker is not None and self._worker.is_alive() and writer_ok

    @property
    def evaluations(self) -> int:
        return self._evaluations

    @property
    def non_finite_inputs(self) -> tuple[str, ...]:
        return self._non_finite

    def liveness(self) -> HealthReport:
        if self._started and not self._closed and not self.worker_alive():
            return HealthReport(ok=False, reasons=["pipeline worker thread died; see the log"])
        return HealthReport(ok=True, details={"evaluations": self._evaluations})

    def readiness(self) -> HealthReport:
        return readiness_report(
            model_loaded=self.model is not None,
            connections=self.connections(),
            non_finite_inputs=self._non_finite,
            worker_alive=self.worker_alive() or not self._started,
            evaluations=self._evaluations,
        )


def _stage_error(stage: str, exc: BaseException) -> PipelineError:
    return PipelineError(f"{type(exc).__name__}: {exc}", stage=stage)


def _summarise(values: Mapping[str, Any]) -> str:
    """Short log form: scalars as numbers, arrays as shape+dtype (never dump an image)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, np.ndarray) and value.size > 8:
            parts.append(f"{key}=<array {value.shape} {value.dtype}>")
        else:
            parts.append(f"{key}={value!r}")
    return "{" + ", ".join(parts) + "}"

