"""Runtime benchmark: model_deploy's runtime vs poly-lithic 1.8.0 (PyPI) on the same config and PVs.

    bash scripts/setup-bench.sh && .venv/bin/python bench/runtime_bench.py [--quick] [--json OUT]

What runs (all on loopback, one after the other, in this one command):

* This process hosts every PV with a real p4p server: the 16 input PVs of the seed's Example 2 and the
  6 output PVs the runtimes write (unique prefix ``BENCH<run id>:`` per run).
* A small lume-model 2.0.1 TorchModel (16 -> 5, ``nn.Sequential`` of two Linear layers, seed 0) is
  dumped to a run directory with ``bench/configs/model_factory.py``; both runtimes load those files.
* One config, ``bench/configs/example2_modules.yaml`` (poly-lithic's ``modules:`` form, the only form
  poly-lithic 1.8 reads; ours reads it too), drives both runtimes, each a SUBPROCESS with EPICS_PVA_*
  pointing at this process's server:
    - ours:        .venv/bin/model-manager -l RUNDIR -c CONFIG -p --metrics-port 0
    - poly-lithic: .venv-bench-polylithic/bin/python bench/polylithic_baseline.py run --config CONFIG
                   (= ``pl run --config CONFIG --publish`` after a version check)
    - raw-echo:    a minimal p4p client (this file, ``_echo``): monitor the 16 input PVs, put each update's
                   value into the 6 output PVs (in order, nothing coalesced). It is the "raw p4p" baseline:
                   both network hops of the pipeline, no transform, no model; its round trip is the latency
                   floor and its sustained rate the ceiling any p4p client reaches writing 6 PVs per update.

Measurements (methodology in bench/README.md):

* end-to-end latency: change ONE input PV (QUAD:IN20:121:BACT, a unique value each time) with a
  server-side post; the sample ends when all 6 output PVs have received, through their put handler
  on this server, the values a reference pipeline computed in-process for that input state (sympy
  formulas from the same config + the same model files). Exact values, so no sample can be confused
  with another one; a wrong value from a runtime shows up as a timeout.
* added latency = p50(e2e) - p50(raw-echo e2e) - p50(model evaluation as the runtime does it: ours through
  its model adapter, poly-lithic through TorchModel.evaluate). Also reported, the issue's formula:
  p50(e2e) - 2 x p50(single hop: post -> client monitor) - p50(evaluate).
* sustained rate (every update): post input updates round-robin over the 16 PVs at increasing rates; a
  step passes when the output writes (puts of SIGMA_X counted at the server, so no client-side monitor
  coalescing hides or adds any) are >= 90% of the posts. Sustained rate = highest rate up to which
  every step passed. Measured for raw-echo too: that is the ceiling for this config on this machine.
* current-state rate: the highest rate up to which, after every step, a marker sample came back within
  twice the runtime's own idle p99 latency + 5 ms, i.e. its outputs kept reflecting the newest inputs
  (coalescing allowed, no backlog). This is what a control system needs from a runtime under bursts.
* throughput: the highest output writes/s seen during the ramp (peak), and output writes/s while inputs
  are posted at 10 kHz ("flood": far above what either runtime evaluates; an unpaced flood would
  only grow poly-lithic's unbounded queue).
* CPU: each runtime's user+system CPU time (/proc) per output at its sustained rate, per latency
  sample, and while idle. Unlike wall-clock figures, these hardly depend on what else the machine runs.

Everything is repeated ``--rounds`` times and reported as medians. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logger = logging.getLogger("runtime_bench")

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CONFIG_TEMPLATE = BENCH_DIR / "configs" / "example2_modules.yaml"
FACTORY_TEMPLATE = BENCH_DIR / "configs" / "model_factory.py"
OUR_VENV = REPO / ".venv"
POLY_VENV = REPO / ".venv-bench-polylithic"
TEMPLATE_PREFIX = "BENCH:"

LATENCY_INPUT = "QUAD:IN20:121:BACT"  # the input changed by latency samples (feeds CQ01:b1_gradient)
WATCH_OUTPUT = "LUME:MLFLOW:SIGMA_X"  # the output whose writes are counted for rates
MAX_CONSECUTIVE_TIMEOUTS = 5  # a runtime that stopped reacting is reported, not waited for
PASS_FRACTION = 0.9  # a rate step passes when outputs >= 90% of inputs
VALUE_REL_TOL = 1e-9  # runtimes vs reference: same float64 math, differences are a few ulp
MODEL_SEED = 0
BENCH_SWITCH_INTERVAL = 0.0002  # seconds; see main()
HIDDEN = 32
LATENCY_GAP_MS = (5.0, 15.0)  # random pause between latency samples (and between spaced evaluate calls)
POST_TICK = 0.0005  # s: the input driver's shortest sleep (see InputDriver.post_at_rate)


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    rounds: int
    latency_samples: int  # per round
    hop_samples: int
    rates: tuple[float, ...]
    step_seconds: float
    flood_seconds: float
    # "As fast as possible" is capped: an unpaced flood (tens of kHz from this process) only grows
    # poly-lithic's unbounded queue (memory) without changing the throughput it can show.
    flood_rate: float
    evaluate_repeat: int
    spaced_evaluate_repeat: int = 150  # ~1.5 s: calls spaced like the latency samples (LATENCY_GAP_MS)
    idle_seconds: float = 2.0
    startup_timeout: float = 180.0  # torch + mlflow imports on 2 busy cores
    sample_timeout: float = 2.0
    drain_timeout: float = 20.0

    @classmethod
    def full(cls, rounds: int | None = None) -> "Settings":
        return cls(rounds=rounds or 5, latency_samples=100, hop_samples=300,
                   rates=(20, 50, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000),
                   step_seconds=2.0, flood_seconds=2.0, flood_rate=10000, evaluate_repeat=500)

    @classmethod
    def quick(cls, rounds: int | None = None) -> "Settings":
        return cls(rounds=rounds or 2, latency_samples=40, hop_samples=100,
                   rates=(20, 50, 100, 200, 300, 500, 1000, 2000, 5000),
                   step_seconds=1.0, flood_seconds=1.5, flood_rate=10000, evaluate_repeat=200)

    def ramp_rounds(self) -> int:
        # Ramps dominate the run time: 3 rounds are enough for a median in the full run.
        return min(self.rounds, 3)


class BenchError(RuntimeError):
    """A benchmark step could not be done; the message says what and how to fix it."""


# ----------------------------------------------------------------------------- run setup


@dataclass
class Layout:
    """PV names and config of one run (prefix substituted)."""

    prefix: str
    config: dict[str, Any]
    input_pvs: list[str]
    output_pvs: list[str]
    model_inputs: list[str]
    model_outputs: list[str]

    def pv(self, template_name: str) -> str:
        return self.prefix + template_name


def load_layout(prefix: str) -> Layout:
    """The config template with the unique PV prefix, and the names the bench needs from it."""
    import yaml

    text = CONFIG_TEMPLATE.read_text().replace(TEMPLATE_PREFIX, prefix)
    config = yaml.safe_load(text)
    modules = config["modules"]
    return Layout(
        prefix=prefix,
        config=config,
        input_pvs=list(modules["input_interface"]["config"]["variables"]),
        output_pvs=list(modules["output_interface"]["config"]["variables"]),
        model_inputs=list(modules["input_transformer"]["config"]["variables"]),
        model_outputs=list(modules["model"]["config"]["variables"]),
    )


def initial_input_values(input_pvs: Sequence[str]) -> dict[str, float]:
    """Distinct, positive starting values (XRMS/YRMS go through a square root)."""
    return {name: 0.5 + 0.1 * index for index, name in enumerate(input_pvs)}


def build_model(run_dir: Path, model_inputs: Sequence[str], model_outputs: Sequence[str]) -> Path:
    """Dump a small lume TorchModel (2 Linear layers, fixed seed) plus the factory into run_dir."""
    import torch
    from lume_model.models import TorchModel
    from lume_model.variables import ScalarVariable

    torch.manual_seed(MODEL_SEED)
    network = torch.nn.Sequential(
        torch.nn.Linear(len(model_inputs), HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, len(model_outputs))
    ).double()
    model = TorchModel(
        model=network,
        # Wide ranges: lume warns on every call for values outside value_range.
        input_variables=[ScalarVariable(name=name, default_value=0.0, value_range=(-1e9, 1e9))
                         for name in model_inputs],
        output_variables=[ScalarVariable(name=name) for name in model_outputs],
        output_format="raw",  # python floats out: poly-lithic's SimpleTransformer rejects tensors
    )
    model.dump(run_dir / "model.yml")
    shutil.copy(FACTORY_TEMPLATE, run_dir / "model_factory.py")
    return run_dir


def write_config(run_dir: Path, layout: Layout) -> Path:
    import yaml

    config = json.loads(json.dumps(layout.config))  # deep copy
    config["modules"]["model"]["config"]["args"]["model_path"] = str(run_dir / "model_factory.py")
    path = run_dir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- reference pipeline


class ReferencePipeline:
    """What the runtimes must output for an input state: the config's formulas (sympy) + the model."""

    def __init__(self, layout: Layout, run_dir: Path):
        modules = layout.config["modules"]
        self._input_transform = _compile_formulas(modules["input_transformer"]["config"])
        self._output_transform = _compile_formulas(modules["output_transformer"]["config"])
        self.model = _load_factory_model(run_dir)

    def model_inputs(self, pv_values: Mapping[str, float]) -> dict[str, float]:
        return self._input_transform(pv_values)

    def __call__(self, pv_values: Mapping[str, float]) -> dict[str, float]:
        outputs = self.model.evaluate(self.model_inputs(pv_values))
        return self._output_transform({name: float(value) for name, value in outputs.items()})


def _compile_formulas(config: Mapping[str, Any]) -> Callable[[Mapping[str, float]], dict[str, float]]:
    import sympy

    symbols = list(config["symbols"])
    # poly-lithic's trick, independent of our runtime's parser: ':' is not allowed in sympy names.
    renamed = [symbol.replace(":", "_") for symbol in symbols]
    functions = {
        name: sympy.lambdify(renamed, sympy.sympify(spec["formula"].replace(":", "_")), modules="math")
        for name, spec in config["variables"].items()
    }

    def transform(values: Mapping[str, float]) -> dict[str, float]:
        args = [values[symbol] for symbol in symbols]
        return {name: float(function(*args)) for name, function in functions.items()}

    return transform


def _load_factory_model(run_dir: Path) -> Any:
    import importlib.util
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation chatter
    spec = importlib.util.spec_from_file_location("bench_model_factory", run_dir / "model_factory.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ModelFactory().get_model()


def time_evaluate(model: Any, inputs: Mapping[str, float], repeat: int,
                  gap_ms: tuple[float, float] | None = None) -> list[float]:
    """Durations of `repeat` calls: back to back (warm), or with a random pause of `gap_ms` before each
    call, the spacing of the latency samples. On this machine a pause of a few ms makes the next call of
    the same torch code 10x slower or more (caches gone cold; no page faults), so the warm figure
    understates what an evaluation costs inside a latency sample."""
    model.evaluate(dict(inputs))  # warm-up
    rng = random.Random(2)
    durations = []
    for _ in range(repeat):
        if gap_ms:
            time.sleep(rng.uniform(*gap_ms) / 1000)
        started = time.perf_counter()
        model.evaluate(dict(inputs))
        durations.append(time.perf_counter() - started)
    return durations


def poly_evaluate(run_dir: Path, inputs: Mapping[str, float], repeat: int, spaced_repeat: int,
                  gap_ms: tuple[float, float]) -> tuple[dict[str, float], list[float], list[float]]:
    """model.evaluate timed inside poly-lithic's venv, through its LocalModelGetter, back to back and
    spaced (see time_evaluate), in one process: loading poly-lithic and torch takes seconds."""
    command = [str(POLY_VENV / "bin" / "python"), str(BENCH_DIR / "polylithic_baseline.py"), "evaluate-time",
               "--model-dir", str(run_dir), "--inputs", json.dumps(dict(inputs)), "--repeat", str(repeat),
               "--spaced-repeat", str(spaced_repeat), "--gap-ms", f"{gap_ms[0]:g},{gap_ms[1]:g}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise BenchError(f"poly-lithic evaluate-time failed (exit {result.returncode}): "
                         f"{result.stderr.strip()[-800:]}")
    last_line = result.stdout.strip().splitlines()[-1]
    data = json.loads(last_line)
    return data["outputs"], data["durations"], data["spaced_durations"]


# ----------------------------------------------------------------------------- the PV host


class OutputRecorder:
    """Sees every write into the output PVs (called from the p4p server's put handlers)."""

    def __init__(self, watch_pv: str):
        self.watch_pv = watch_pv
        self.watch_times: list[float] = []  # perf_counter of every write to watch_pv (list.append is atomic)
        self.complete = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}
        self._arrivals: dict[str, float] = {}

    def expect(self, values: Mapping[str, float]) -> None:
        with self._lock:
            self._pending = dict(values)
            self._arrivals = {}
            self.complete.clear()

    def arrivals(self) -> dict[str, float]:
        with self._lock:
            return dict(self._arrivals)

    def on_write(self, name: str, value: float, when: float) -> None:
        if name == self.watch_pv:
            self.watch_times.append(when)
        with self._lock:
            target = self._pending.get(name)
            if target is None or not math.isclose(value, target, rel_tol=VALUE_REL_TOL, abs_tol=1e-12):
                return
            del self._pending[name]
            self._arrivals[name] = when
            if not self._pending:
                self.complete.set()


class _RecordingPutHandler:
    """Output PV put handler: accept the client's write, tell the recorder when it arrived.

    It runs on the p4p server's network thread (``p4p.server.raw.SharedPV``: no hand-over to a worker
    thread), like an IOC answering in C: the PV host must not be what limits a runtime's output rate.
    The PV's own value is not updated: the runtimes only write it (poly-lithic reads it once before
    each write, and gets the initial value)."""

    def __init__(self, name: str, recorder: OutputRecorder):
        self.name = name
        self.recorder = recorder

    def put(self, pv: Any, op: Any) -> None:
        arrived = time.perf_counter()
        value = float(op.value())
        op.done()
        self.recorder.on_write(self.name, value, arrived)


class BenchPVServer:
    """An isolated p4p server (127.0.0.1, random ports) hosting all input and output PVs.

    Posts are cheap (one reused Value handed to p4p's C++ post, which copies it; no NTScalar.wrap per
    post) so that posting thousands of updates a second takes little of the CPU the runtimes share.
    ``post`` reuses that Value: call it from one thread (the bench posts from its main thread)."""

    def __init__(self, inputs: Mapping[str, float], outputs: Sequence[str], recorder: OutputRecorder):
        from p4p import _p4p
        from p4p.nt import NTScalar
        from p4p.server import Server
        from p4p.server.raw import SharedPV as DirectSharedPV
        from p4p.server.thread import SharedPV

        self.values = dict(inputs)  # what the input PVs currently hold (the reference pipeline's state)
        input_type = NTScalar("d")  # pvxs accepts a posted Value only of the PV's own type: share it
        self._inputs = {name: SharedPV(nt=input_type, initial=value) for name, value in inputs.items()}
        self._outputs = {name: DirectSharedPV(nt=NTScalar("d"), initial=0.0,
                                              handler=_RecordingPutHandler(name, recorder))
                         for name in outputs}
        self._server = Server(providers=[{**self._inputs, **self._outputs}], isolate=True)
        self.conf: dict[str, str] = dict(self._server.conf())
        self._post_value = input_type.wrap(0.0)  # fields stay marked changed: every post sends value + stamp
        self._post = _p4p.SharedPV.post

    def post(self, name: str, value: float) -> None:
        self.values[name] = value
        seconds, fraction = divmod(time.time(), 1.0)
        update = self._post_value
        update["value"] = value
        update["timeStamp.secondsPastEpoch"] = int(seconds)
        update["timeStamp.nanoseconds"] = int(fraction * 1e9)
        self._post(self._inputs[name], update)

    def client_env(self) -> dict[str, str]:
        """os.environ for a subprocess whose p4p clients reach this server over TCP only."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("EPICS_PVA")}
        env.update({
            "EPICS_PVA_NAME_SERVERS": f"127.0.0.1:{self.conf['EPICS_PVA_SERVER_PORT']}",
            "EPICS_PVA_ADDR_LIST": "",
            "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        })
        return env

    def client(self) -> Any:
        from p4p.client.thread import Context

        return Context("pva", conf=self.conf, useenv=False)

    def close(self) -> None:
        self._server.stop()


# ----------------------------------------------------------------------------- driving inputs


class InputDriver:
    """Posts input values (always unique, so outputs can be matched exactly) and measures."""

    def __init__(self, server: BenchPVServer, recorder: OutputRecorder, input_pvs: Sequence[str], latency_pv: str):
        self.server = server
        self.recorder = recorder
        self.input_pvs = list(input_pvs)
        self.latency_pv = latency_pv
        self._bases = dict(server.values)
        self._sequence = 0
        self._latency_sequence = 0

    def _next_value(self, name: str) -> float:
        # Small monotonic offsets: every posted value is new, inputs stay in a sane range.
        self._sequence += 1
        return self._bases[name] + 1e-6 * self._sequence

    def latency_sample(self, expected: Callable[[Mapping[str, float]], dict[str, float]],
                       timeout: float) -> float | None:
        """Seconds from posting the latency PV until all outputs hold the expected values."""
        # Steps of 1e-3 (not the 1e-6 of rate tests): every output moves far beyond the matching
        # tolerance, so a late write of the previous sample can never pass for this one.
        self._latency_sequence += 1
        value = self._bases[self.latency_pv] + 1e-3 * self._latency_sequence
        state = {**self.server.values, self.latency_pv: value}
        self.recorder.expect(expected(state))
        started = time.perf_counter()
        self.server.post(self.latency_pv, value)
        if not self.recorder.complete.wait(timeout):
            return None
        return max(self.recorder.arrivals().values()) - started

    def post_round_robin(self, count: int, start: int) -> None:
        for index in range(start, start + count):
            name = self.input_pvs[index % len(self.input_pvs)]
            self.server.post(name, self._next_value(name))

    def post_at_rate(self, rate: float, duration: float) -> tuple[int, float, float]:
        """Post round-robin at ``rate``/s for ``duration`` s; returns (posted, t_start, t_end).

        The loop always sleeps between rounds, at least ``POST_TICK`` s: above 1/POST_TICK Hz the posts due
        in one tick go out together, at the same mean rate. It used to spin when the next post was due in
        under 0.3 ms (above ~3 kHz), which kept one of the two cores and the GIL the output PVs' put
        handlers need busy: the bench then slowed the runtimes' writes, not their own cost."""
        total = max(1, int(rate * duration))
        posted = 0
        started = time.perf_counter()
        while posted < total:
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            if due > posted:
                self.post_round_robin(due - posted, posted)
                posted = due
            wait = started + posted / rate - time.perf_counter()
            # sleep overshoots by ~0.1 ms; the due-count above catches up
            time.sleep(max(wait - 0.0002, POST_TICK))
        return posted, started, time.perf_counter()

    def wait_quiet(self, quiet: float, timeout: float) -> bool:
        """Wait until no output write for ``quiet`` s (the runtime drained its backlog)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            times = self.recorder.watch_times
            last = times[-1] if times else 0.0
            idle = time.perf_counter() - last
            if idle >= quiet:
                return True
            time.sleep(min(quiet - idle, 0.05) + 0.001)
        return False

    def writes_between(self, start: float, end: float) -> int:
        return sum(1 for when in self.recorder.watch_times if start <= when <= end)


def single_hop_latencies(server: BenchPVServer, pv: str, samples: int) -> list[float]:
    """Server post -> client monitor callback in this process (one network hop, no runtime)."""
    arrived = threading.Event()
    target: dict[str, float] = {}

    def on_update(value: Any) -> None:
        if isinstance(value, Exception):
            return
        if target and math.isclose(float(value), target["value"], rel_tol=0, abs_tol=1e-12):
            target["when"] = time.perf_counter()
            arrived.set()

    context = server.client()
    subscription = context.monitor(pv, on_update)
    try:
        time.sleep(0.3)  # connect + initial update
        results = []
        base = server.values[pv]
        for index in range(samples):
            value = base + 1e-7 * (index + 1)
            arrived.clear()
            target.clear()
            target["value"] = value
            started = time.perf_counter()
            server.post(pv, value)
            if arrived.wait(1.0):
                results.append(target["when"] - started)
            time.sleep(0.002)
        server.post(pv, base)
        return results
    finally:
        subscription.close()
        context.close()


# ----------------------------------------------------------------------------- runtimes under test


@dataclass
class Subject:
    """One thing to measure: a command line and what it must write for an input state."""

    name: str
    argv: list[str]
    expected: Callable[[Mapping[str, float]], dict[str, float]]
    measure_rates: bool = True
    measure_floods: bool = True  # a flood only grows the backlog of a runtime that queues every update
    env_extra: dict[str, str] = field(default_factory=dict)


class RuntimeProcess:
    """A subprocess in its own session (so its children can be stopped with it), logging to a file."""

    def __init__(self, subject: Subject, env: Mapping[str, str], log_path: Path, cwd: Path):
        self.subject = subject
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            subject.argv, env={**env, **subject.env_extra}, cwd=cwd,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (all its threads) so far, from /proc."""
        return process_cpu_seconds(self.process.pid)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # the session we created for it
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
            except ProcessLookupError:
                pass
        self._log.close()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (Linux /proc). CPU time, unlike wall time, barely depends on what else
    the machine is running, so it compares the runtimes' efficiency even on a busy machine."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(runtime: RuntimeProcess, driver: InputDriver, timeout: float) -> float:
    """Probe with latency samples until one completes; returns the seconds it took to be ready."""
    started = time.perf_counter()
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if not runtime.alive():
            raise BenchError(f"{runtime.subject.name} exited with code {runtime.process.returncode} before "
                             f"serving; its log ({runtime.log_path}) ends with:\n{runtime.log_tail()}")
        if driver.latency_sample(runtime.subject.expected, timeout=1.0) is not None:
            return time.perf_counter() - started
    raise BenchError(f"{runtime.subject.name} did not write the expected outputs within {timeout:.0f} s; "
                     f"its log ({runtime.log_path}) ends with:\n{runtime.log_tail()}")


# ----------------------------------------------------------------------------- measuring one subject


@dataclass
class RateStep:
    rate: float
    posted: int
    outputs: int
    seconds: float
    passed: bool
    drained: bool
    cpu_seconds: float  # the runtime's CPU time from the first post to the end of the grace period
    marker_ms: float | None = None  # latency of the marker sample posted right after the step
    fresh: bool = False  # marker_ms within the subject's freshness limit: no backlog, outputs are current

    @property
    def cpu_ms_per_output(self) -> float | None:
        return self.cpu_seconds * 1000 / self.outputs if self.outputs else None

    @property
    def input_rate(self) -> float:
        return self.posted / self.seconds

    @property
    def output_rate(self) -> float:
        return self.outputs / self.seconds


@dataclass
class SubjectResult:
    name: str
    startup_seconds: float | None = None
    latency_rounds_ms: list[list[float]] = field(default_factory=list)
    latency_timeouts: int = 0
    idle_cpu_percent: float | None = None  # % of one core while no input changes
    latency_cpu_ms: list[float] = field(default_factory=list)  # per round: runtime CPU ms per sample
    ramps: list[list[RateStep]] = field(default_factory=list)
    sustained_rates: list[float] = field(default_factory=list)
    current_state_rates: list[float] = field(default_factory=list)
    fresh_limit_ms: float | None = None
    floods: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None
    log: str | None = None

    def latency_p(self, q: float) -> float | None:
        """Median over rounds of the per-round q-quantile, in ms."""
        values = [quantile(samples, q) for samples in self.latency_rounds_ms if samples]
        return statistics.median(values) if values else None


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure_idle_cpu(runtime: RuntimeProcess, seconds: float) -> float:
    before = runtime.cpu_seconds()
    time.sleep(seconds)
    return (runtime.cpu_seconds() - before) / seconds * 100


def measure_latency(result: SubjectResult, driver: InputDriver, runtime: RuntimeProcess, settings: Settings) -> None:
    subject = runtime.subject
    rng = random.Random(1)
    consecutive_timeouts = 0
    for round_index in range(settings.rounds):
        samples = []
        cpu_before = runtime.cpu_seconds()
        for _ in range(settings.latency_samples):
            latency = driver.latency_sample(subject.expected, settings.sample_timeout)
            if latency is None:
                result.latency_timeouts += 1
                consecutive_timeouts += 1
                if consecutive_timeouts >= MAX_CONSECUTIVE_TIMEOUTS:
                    raise BenchError(
                        f"{subject.name} stopped writing the expected outputs ({consecutive_timeouts} "
                        f"latency samples in a row got no answer within {settings.sample_timeout:g} s)")
                driver.wait_quiet(0.2, 2.0)
            else:
                consecutive_timeouts = 0
                samples.append(latency * 1000)
            # Random spacing: the next post must not phase-lock with a runtime's polling loop.
            time.sleep(rng.uniform(*LATENCY_GAP_MS) / 1000)
        result.latency_rounds_ms.append(samples)
        result.latency_cpu_ms.append((runtime.cpu_seconds() - cpu_before) * 1000 / settings.latency_samples)
        if samples:
            logger.info("  %s latency round %d: p50 %.3f ms, p90 %.3f ms (%d samples)", subject.name,
                        round_index + 1, quantile(samples, 0.5), quantile(samples, 0.9), len(samples))


def drain(driver: InputDriver, subject: Subject, timeout: float) -> float | None:
    """Wait until the runtime has caught up; returns the marker sample's latency in ms (None: no answer).

    A marker answered means every earlier input was handled (poly-lithic and raw-echo work through
    their queues in order; ours always evaluates the latest values). A quiet period is not enough:
    under load poly-lithic pauses for seconds and then continues. How long the marker takes is the
    freshness of the outputs right after the step: a backlog shows up as a marker latency far above
    the runtime's idle latency."""
    latency = driver.latency_sample(subject.expected, timeout)
    return None if latency is None else latency * 1000


def fresh_limit_ms(result: SubjectResult) -> float | None:
    """Marker latency that still counts as "outputs current": twice the subject's own idle p99 + 5 ms.

    Relative to each runtime's own idle latency, so a runtime with a slow loop (poly-lithic polls
    every 10 ms) is not failed for that, only for falling behind."""
    p99 = result.latency_p(0.99)
    return None if p99 is None else 2 * p99 + 5.0


def measure_ramp(driver: InputDriver, runtime: RuntimeProcess, settings: Settings,
                 fresh_limit: float | None) -> tuple[list[RateStep], float, float]:
    """One ramp over the rates. Returns (steps, sustained rate, current-state rate).

    Sustained rate: the highest rate up to which every step wrote outputs for >= 90% of the posted
    updates (each update evaluated and written). Current-state rate: the highest rate up to which the
    marker after every step came back within ``fresh_limit`` ms (the outputs kept up with the newest
    inputs, coalescing allowed). A failing step is retried once; the ramp stops at a rate that fails
    both criteria twice, or when the runtime's backlog does not drain.
    """
    subject = runtime.subject
    steps: list[RateStep] = []
    sustained = current_state = 0.0
    strict_ok = fresh_ok = True
    for rate in settings.rates:
        passed = fresh = False
        for _attempt in range(2):  # a single unlucky step (GC, scheduler) must not end the ramp
            cpu_before = runtime.cpu_seconds()
            posted, started, ended = driver.post_at_rate(rate, settings.step_seconds)
            grace = 0.1 + min(2.0, 5.0 / rate)  # outputs of the last inputs are still in flight
            time.sleep(grace)
            cpu = runtime.cpu_seconds() - cpu_before
            outputs = driver.writes_between(started, ended + grace)
            passed = outputs >= PASS_FRACTION * posted
            marker_ms = drain(driver, subject, settings.drain_timeout)
            fresh = marker_ms is not None and fresh_limit is not None and marker_ms <= fresh_limit
            step = RateStep(rate, posted, outputs, ended - started, passed, marker_ms is not None, cpu,
                            marker_ms, fresh)
            steps.append(step)
            logger.info("  %s %6.0f Hz: in %7.1f/s out %7.1f/s, CPU %s ms/output, %s, marker %s ms%s",
                        subject.name, rate, step.input_rate, step.output_rate, _fmt(step.cpu_ms_per_output),
                        "pass" if passed else "FAIL", _fmt(marker_ms, 1),
                        "" if step.drained else " (backlog not drained)")
            if (passed and fresh) or not step.drained:
                break
            if (passed or not strict_ok) and (fresh or not fresh_ok):
                break  # a retry cannot change the outcome of the ramp
        strict_ok = strict_ok and passed
        fresh_ok = fresh_ok and fresh
        if strict_ok:
            sustained = rate
        if fresh_ok:
            current_state = rate
        if not (strict_ok or fresh_ok) or not steps[-1].drained:
            break
    return steps, sustained, current_state


def measure_flood(driver: InputDriver, settings: Settings, name: str) -> dict[str, float]:
    """Output writes/s while inputs arrive far faster than any runtime here evaluates."""
    posted, started, ended = driver.post_at_rate(settings.flood_rate, settings.flood_seconds)
    seconds = ended - started
    outputs = driver.writes_between(started, ended)
    result = {"input_rate": posted / seconds, "output_rate": outputs / seconds, "seconds": seconds}
    logger.info("  %s flood: in %.0f/s out %.1f/s", name, result["input_rate"], result["output_rate"])
    return result


def measure_subject(subject: Subject, server: BenchPVServer, driver: InputDriver, settings: Settings,
                    run_dir: Path) -> SubjectResult:
    result = SubjectResult(subject.name)
    log_path = run_dir / f"{subject.name}.log"
    logger.info("starting %s: %s", subject.name, " ".join(subject.argv))
    runtime = RuntimeProcess(subject, server.client_env(), log_path, cwd=run_dir)
    result.log = str(log_path)
    try:
        result.startup_seconds = wait_until_serving(runtime, driver, settings.startup_timeout)
        logger.info("  %s serving after %.1f s", subject.name, result.startup_seconds)
        for _ in range(10):  # warm-up: first evaluations are slower (allocations, caches)
            driver.latency_sample(subject.expected, settings.sample_timeout)
        result.idle_cpu_percent = measure_idle_cpu(runtime, settings.idle_seconds)
        logger.info("  %s idle CPU: %.1f%% of a core", subject.name, result.idle_cpu_percent)
        measure_latency(result, driver, runtime, settings)
        if subject.measure_rates:
            result.fresh_limit_ms = fresh_limit_ms(result)
            for _ in range(settings.ramp_rounds()):
                steps, sustained, current_state = measure_ramp(driver, runtime, settings, result.fresh_limit_ms)
                result.ramps.append(steps)
                result.sustained_rates.append(sustained)
                result.current_state_rates.append(current_state)
                if steps and not steps[-1].drained:
                    logger.warning("  %s still has a backlog; skipping further ramp rounds", subject.name)
                    break
            for _ in range(settings.ramp_rounds() if subject.measure_floods else 0):
                result.floods.append(measure_flood(driver, settings, subject.name))
        if not runtime.alive():
            raise BenchError(f"{subject.name} died during the measurements; log ends with:\n{runtime.log_tail()}")
    except BenchError as exc:
        result.error = str(exc)
        logger.error("%s: %s", subject.name, exc)
    finally:
        runtime.stop()
    return result


# ----------------------------------------------------------------------------- echo baseline


def run_echo(input_pvs: Sequence[str], output_pvs: Sequence[str]) -> int:
    """Minimal p4p runtime: monitor the input PVs, write each update's value to all outputs (one
    parallel put per update, in arrival order, nothing coalesced).

    Same structure as a runtime (callbacks hand over to one worker thread which puts), so it is the
    floor any p4p-based runtime pays for the two network hops (latency) and the ceiling of the rate
    at which any p4p client can write 6 outputs per input update on this machine (sustained rate).
    """
    import queue

    from p4p.client.thread import Context

    context = Context("pva")
    pending: "queue.Queue[float]" = queue.Queue()
    stop = threading.Event()

    def on_update(value: Any) -> None:
        if not isinstance(value, Exception):
            pending.put(float(value))

    def worker() -> None:
        while not stop.is_set():
            try:
                value = pending.get(timeout=0.5)
            except queue.Empty:
                continue
            context.put(list(output_pvs), [value] * len(output_pvs), get=False, throw=False)

    threading.Thread(target=worker, daemon=True).start()
    subscriptions = [context.monitor(name, on_update) for name in input_pvs]
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    for subscription in subscriptions:
        subscription.close()
    context.close()
    return 0


# ----------------------------------------------------------------------------- orchestration


def subjects_for(layout: Layout, run_dir: Path, config_path: Path, reference: ReferencePipeline,
                 only: str | None, polylithic_as_released: bool = False) -> list[Subject]:
    latency_pv = layout.pv(LATENCY_INPUT)
    echo = Subject(
        name="raw-echo",
        argv=[sys.executable, str(Path(__file__).resolve()), "_echo", "--inputs", ",".join(layout.input_pvs),
              "--outputs", ",".join(layout.output_pvs)],
        expected=lambda state: {name: state[latency_pv] for name in layout.output_pvs},
        measure_floods=False,
    )
    ours = Subject(
        name="ours",
        argv=[str(OUR_VENV / "bin" / "model-manager"), "-l", str(run_dir), "-c", str(config_path), "-p",
              "--metrics-port", "0"],
        expected=reference,
    )
    poly = Subject(
        name="poly-lithic",
        argv=[str(POLY_VENV / "bin" / "python"), str(BENCH_DIR / "polylithic_baseline.py"), "run",
              "--config", str(config_path), *(["--as-released"] if polylithic_as_released else [])],
        expected=reference,
        env_extra={"TRACE_PORT": str(free_tcp_port())},  # its trace API would otherwise bind 8100
    )
    chosen = [echo]
    if only in (None, "ours"):
        chosen.append(ours)
    if only in (None, "poly-lithic"):
        chosen.append(poly)
    return chosen


def check_environment(only: str | None) -> None:
    problems = []
    if only in (None, "ours") and not (OUR_VENV / "bin" / "model-manager").exists():
        problems.append(f"{OUR_VENV}/bin/model-manager not found; fix: bash scripts/setup.sh")
    if only in (None, "poly-lithic") and not (POLY_VENV / "bin" / "python").exists():
        problems.append(f"{POLY_VENV} not found; fix: bash scripts/setup-bench.sh")
    if problems:
        raise BenchError("; ".join(problems))


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
            "python": platform.python_version(),
            # Other work on the machine changes every figure here: keep it next to them.
            "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()]}


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for package in ("p4p", "torch", "lume-model", "model-deploy-operator"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    site = list((POLY_VENV / "lib").glob("python*/site-packages/poly_lithic-*.dist-info"))
    versions["poly-lithic"] = site[0].name.removesuffix(".dist-info").split("-")[1] if site else None
    return versions


def run_benchmark(settings: Settings, only: str | None, workdir: Path | None, keep: bool,
                  polylithic_as_released: bool = False) -> dict[str, Any]:
    check_environment(only)
    load_at_start = [round(value, 2) for value in os.getloadavg()]
    run_id = uuid.uuid4().hex[:8]
    prefix = f"BENCH{run_id}:"
    run_dir = Path(tempfile.mkdtemp(prefix=f"runtime-bench-{run_id}-", dir=workdir))
    layout = load_layout(prefix)
    logger.info("run %s in %s (PV prefix %s)", run_id, run_dir, prefix)

    build_model(run_dir, layout.model_inputs, layout.model_outputs)
    config_path = write_config(run_dir, layout)
    reference = ReferencePipeline(layout, run_dir)
    inputs = initial_input_values(layout.input_pvs)
    model_inputs = reference.model_inputs(inputs)

    # Each runtime's own evaluation path: ours wraps the model in its adapter (lume_torch's fast path for a
    # TorchModel), poly-lithic calls TorchModel.evaluate. The adapter must give lume's exact outputs.
    from model_deploy.runtime.models.adapters import adapt_model

    our_model = adapt_model(reference.model)
    lume_outputs = reference.model.evaluate(dict(model_inputs))
    if our_model.evaluate(dict(model_inputs)) != lume_outputs:
        raise BenchError(f"model_deploy's {our_model.kind} evaluates differently from TorchModel.evaluate")
    logger.info("our runtime evaluates the model with %s", our_model.kind)
    evaluate = {"ours": time_evaluate(our_model, model_inputs, settings.evaluate_repeat)}
    spaced = {"ours": time_evaluate(our_model, model_inputs, settings.spaced_evaluate_repeat, LATENCY_GAP_MS)}
    if only in (None, "poly-lithic"):
        poly_outputs, evaluate["poly-lithic"], spaced["poly-lithic"] = poly_evaluate(
            run_dir, model_inputs, settings.evaluate_repeat, settings.spaced_evaluate_repeat, LATENCY_GAP_MS)
        ours_outputs = reference.model.evaluate(dict(model_inputs))
        mismatched = [name for name, value in ours_outputs.items()
                      if not math.isclose(float(value), poly_outputs[name], rel_tol=1e-12)]
        if mismatched:
            raise BenchError(f"the two venvs evaluate the model differently for {mismatched}: "
                             f"{ours_outputs} vs {poly_outputs}; the comparison would be meaningless")
    evaluate_ms = {name: quantile(values, 0.5) * 1000 for name, values in evaluate.items()}
    spaced_ms = {name: quantile(values, 0.5) * 1000 for name, values in spaced.items()}
    logger.info("model.evaluate p50: %s; spaced like the latency samples: %s",
                ", ".join(f"{k} {v:.3f} ms" for k, v in evaluate_ms.items()),
                ", ".join(f"{k} {v:.3f} ms" for k, v in spaced_ms.items()))

    recorder = OutputRecorder(layout.pv(WATCH_OUTPUT))
    server = BenchPVServer(inputs, layout.output_pvs, recorder)
    results: dict[str, SubjectResult] = {}
    try:
        driver = InputDriver(server, recorder, layout.input_pvs, layout.pv(LATENCY_INPUT))
        hop_ms = [value * 1000 for value in single_hop_latencies(server, layout.pv(LATENCY_INPUT), settings.hop_samples)]
        logger.info("single hop post -> monitor p50 %.3f ms", quantile(hop_ms, 0.5))
        for subject in subjects_for(layout, run_dir, config_path, reference, only, polylithic_as_released):
            results[subject.name] = measure_subject(subject, server, driver, settings, run_dir)
            driver.wait_quiet(0.3, 5.0)
    finally:
        server.close()
    report = build_report(settings, run_id, run_dir, layout, evaluate_ms, spaced_ms, hop_ms, results)
    report["machine"]["load_average_at_start"] = load_at_start
    if not keep and not any(result.error for result in results.values()):
        shutil.rmtree(run_dir, ignore_errors=True)
        report["run_dir"] = None
    return report


# ----------------------------------------------------------------------------- report


def rate_figures(result: SubjectResult) -> dict[str, Any]:
    """The ramp and flood figures of one subject (medians over ramps)."""
    entry: dict[str, Any] = {
        "fresh_limit_ms": result.fresh_limit_ms,
        "sustained_rates": result.sustained_rates,
        # median_low: with an even number of rounds, report a rate that was actually sustained
        "sustained_rate_median": statistics.median_low(result.sustained_rates) if result.sustained_rates else None,
        "current_state_rates": result.current_state_rates,
        "current_state_rate_median": (
            statistics.median_low(result.current_state_rates) if result.current_state_rates else None),
        "ramps": [[{**asdict(step), "input_rate": step.input_rate, "output_rate": step.output_rate,
                    "cpu_ms_per_output": step.cpu_ms_per_output} for step in ramp] for ramp in result.ramps],
    }
    # CPU per output at the highest passing step of each ramp (1 evaluation per input there)
    at_sustained = [max((step for step in ramp if step.passed), key=lambda step: step.rate)
                    for ramp in result.ramps if any(step.passed for step in ramp)]
    per_output = [step.cpu_ms_per_output for step in at_sustained if step.cpu_ms_per_output]
    entry["cpu_ms_per_output_at_sustained"] = statistics.median(per_output) if per_output else None
    entry["peak_output_rates"] = [max((step.output_rate for step in ramp), default=0.0) for ramp in result.ramps]
    entry["peak_output_rate_median"] = statistics.median(entry["peak_output_rates"])
    entry["floods"] = result.floods
    entry["flood_output_rate_median"] = (
        statistics.median(item["output_rate"] for item in result.floods) if result.floods else None)
    return entry


def build_report(settings: Settings, run_id: str, run_dir: Path, layout: Layout, evaluate_ms: dict[str, float],
                 spaced_ms: dict[str, float], hop_ms: list[float],
                 results: dict[str, SubjectResult]) -> dict[str, Any]:
    echo = results.get("raw-echo")
    echo_p50 = echo.latency_p(0.5) if echo else None
    hop_p50 = quantile(hop_ms, 0.5) if hop_ms else None
    subjects: dict[str, Any] = {}
    for name, result in results.items():
        p50 = result.latency_p(0.5)
        entry: dict[str, Any] = {
            "error": result.error,
            "log": result.log,
            "startup_seconds": result.startup_seconds,
            "latency_ms": {"p50": p50, "p90": result.latency_p(0.9), "p99": result.latency_p(0.99),
                           "rounds": result.latency_rounds_ms, "timeouts": result.latency_timeouts},
            "idle_cpu_percent": result.idle_cpu_percent,
            "latency_cpu_ms_per_sample": result.latency_cpu_ms,
            "latency_cpu_ms_per_sample_median": (
                statistics.median(result.latency_cpu_ms) if result.latency_cpu_ms else None),
        }
        if name != "raw-echo":
            evaluate = evaluate_ms.get(name, evaluate_ms["ours"])
            entry["evaluate_p50_ms"] = evaluate
            entry["added_latency_p50_ms"] = (p50 - echo_p50 - evaluate) if None not in (p50, echo_p50) else None
            entry["added_latency_issue_formula_ms"] = (
                p50 - 2 * hop_p50 - evaluate) if None not in (p50, hop_p50) else None
            # Not subtracted anywhere: measured in this process, not the runtime's, it over-corrects (an
            # 'added latency' with it came out negative in a trial). It shows what the cold path costs.
            entry["evaluate_spaced_p50_ms"] = spaced_ms.get(name, spaced_ms["ours"])
        if result.ramps:
            entry.update(rate_figures(result))
        subjects[name] = entry
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "versions": package_versions(),
        "settings": asdict(settings),
        "run_id": run_id,
        "run_dir": str(run_dir),
        "pv_prefix": layout.prefix,
        "config_template": str(CONFIG_TEMPLATE.relative_to(REPO)),
        "single_hop_p50_ms": hop_p50,
        "evaluate_p50_ms": evaluate_ms,
        "evaluate_spaced_p50_ms": spaced_ms,
        "subjects": subjects,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or denominator <= 0:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def format_table(report: dict[str, Any]) -> str:
    subjects = report["subjects"]
    ours = subjects.get("ours", {})
    poly = subjects.get("poly-lithic", {})
    echo = subjects.get("raw-echo", {})

    def get(entry: dict[str, Any], *path: str) -> float | None:
        value: Any = entry
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    rows = [
        # (metric, ours, poly, ratio: ours better > 1)
        ("e2e latency p50 (ms)", get(ours, "latency_ms", "p50"), get(poly, "latency_ms", "p50"), "lower"),
        ("e2e latency p90 (ms)", get(ours, "latency_ms", "p90"), get(poly, "latency_ms", "p90"), "lower"),
        ("e2e latency p99 (ms)", get(ours, "latency_ms", "p99"), get(poly, "latency_ms", "p99"), "lower"),
        ("added latency p50 (ms)", get(ours, "added_latency_p50_ms"), get(poly, "added_latency_p50_ms"), "lower"),
        ("added latency, 2x hop formula (ms)", get(ours, "added_latency_issue_formula_ms"),
         get(poly, "added_latency_issue_formula_ms"), "lower"),
        ("model.evaluate p50 (ms)", get(ours, "evaluate_p50_ms"), get(poly, "evaluate_p50_ms"), "none"),
        ("model.evaluate p50, spaced (ms)", get(ours, "evaluate_spaced_p50_ms"), get(poly, "evaluate_spaced_p50_ms"),
         "none"),
        ("sustained rate, every update (Hz)", get(ours, "sustained_rate_median"), get(poly, "sustained_rate_median"),
         "higher"),
        ("current-state rate (Hz)", get(ours, "current_state_rate_median"), get(poly, "current_state_rate_median"),
         "higher"),
        ("peak throughput in ramp (outputs/s)", get(ours, "peak_output_rate_median"),
         get(poly, "peak_output_rate_median"), "higher"),
        ("throughput under flood (outputs/s)", get(ours, "flood_output_rate_median"),
         get(poly, "flood_output_rate_median"), "higher"),
        ("CPU per evaluation at sustained (ms)", get(ours, "cpu_ms_per_output_at_sustained"),
         get(poly, "cpu_ms_per_output_at_sustained"), "lower"),
        ("CPU per latency sample (ms)", get(ours, "latency_cpu_ms_per_sample_median"),
         get(poly, "latency_cpu_ms_per_sample_median"), "lower"),
        ("idle CPU (% of a core)", get(ours, "idle_cpu_percent"), get(poly, "idle_cpu_percent"), "lower"),
        ("startup to first output (s)", get(ours, "startup_seconds"), get(poly, "startup_seconds"), "lower"),
    ]
    lines = [f"{'metric':<38} {'ours':>12} {'poly-lithic':>12} {'ratio':>9}", "-" * 74]
    for metric, ours_value, poly_value, better in rows:
        if better == "higher":
            ratio = _ratio(ours_value, poly_value)
        elif better == "lower" and "added" not in metric:
            ratio = _ratio(poly_value, ours_value)
        else:
            ratio = ""
        digits = 0 if "Hz" in metric or "outputs/s" in metric else (1 if "(s)" in metric or "%" in metric else 3)
        lines.append(f"{metric:<38} {_fmt(ours_value, digits):>12} {_fmt(poly_value, digits):>12} {ratio:>9}")
    lines.append("-" * 74)
    lines.append(f"raw p4p round trip (echo: both hops) p50: {_fmt(get(echo, 'latency_ms', 'p50'))} ms; "
                 f"single hop (post -> monitor) p50: {_fmt(report['single_hop_p50_ms'])} ms")
    echo_rate = get(echo, "sustained_rate_median")
    if echo_rate is not None:
        lines.append(f"raw p4p ceiling (echo: 6 parallel puts per input update, no transform or model): "
                     f"{echo_rate:.0f} Hz every update; CPU {_fmt(get(echo, 'cpu_ms_per_output_at_sustained'))} "
                     "ms/output")
    ours_rate, poly_rate = get(ours, "sustained_rate_median"), get(poly, "sustained_rate_median")
    added = get(ours, "added_latency_p50_ms")
    if ours_rate is not None and poly_rate:
        verdict = "met" if ours_rate >= 10 * poly_rate else "NOT met"
        lines.append(f"target sustained rate (every update) >= 10x poly-lithic: {verdict} "
                     f"({ours_rate / poly_rate:.1f}x)")
        ours_current, poly_current = get(ours, "current_state_rate_median"), get(poly, "current_state_rate_median")
        if ours_current is not None and poly_current:
            verdict = "met" if ours_current >= 10 * poly_current else "NOT met"
            lines.append(f"target current-state rate >= 10x poly-lithic: {verdict} ({ours_current / poly_current:.1f}x)")
    if added is not None:
        lines.append(f"target added p50 latency < 1 ms: {'met' if added < 1.0 else 'NOT met'} ({added:.3f} ms)")
    for name, entry in subjects.items():
        if entry.get("error"):
            lines.append(f"{name}: FAILED: {entry['error'].splitlines()[0]} (log: {entry.get('log')})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="End-to-end latency and sustained rate: model_deploy runtime vs poly-lithic 1.8.0 "
                    "on the seed's Example 2 (16 inputs, lume TorchModel, 6 outputs).")
    parser.add_argument("--quick", action="store_true", help="short run (about a minute)")
    parser.add_argument("--rounds", type=int, help="repetitions of each measurement (default 5, quick 2)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the full results as JSON")
    parser.add_argument("--only", choices=("ours", "poly-lithic"), help="measure one runtime (plus the baseline)")
    parser.add_argument("--workdir", type=Path, help="parent directory for the run directory (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (model, config, logs)")
    parser.add_argument("--polylithic-as-released", action="store_true",
                        help="run poly-lithic without the p4p subscription fix (see polylithic_baseline.py)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_echo"]:  # internal: the raw p4p baseline subprocess
        echo = argparse.ArgumentParser(prog="runtime_bench.py _echo")
        echo.add_argument("--inputs", required=True)
        echo.add_argument("--outputs", required=True)
        echo_args = echo.parse_args(argv[1:])
        return run_echo(echo_args.inputs.split(","), echo_args.outputs.split(","))
    args = parse_args(argv)
    # Posting at kHz rates keeps this process's main thread busy; with CPython's default 5 ms switch
    # interval the PV host's put handlers (the runtimes' writes) would wait up to 5 ms for the GIL each.
    sys.setswitchinterval(BENCH_SWITCH_INTERVAL)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.rounds is not None and args.rounds < 1:
        sys.stderr.write("runtime_bench: --rounds must be >= 1\n")
        return 2
    settings = Settings.quick(args.rounds) if args.quick else Settings.full(args.rounds)
    started = time.perf_counter()
    try:
        report = run_benchmark(settings, args.only, args.workdir, args.keep, args.polylithic_as_released)
    except BenchError as exc:
        sys.stderr.write(f"runtime_bench: {exc}\n")
        return 1
    report["wall_seconds"] = time.perf_counter() - started
    print(format_table(report))
    machine = report["machine"]
    print(f"(wall time {report['wall_seconds']:.0f} s, {machine['cpus']} CPUs, load average at start "
          f"{machine['load_average_at_start'][0]:.1f} / end {machine['load_average_1_5_15'][0]:.1f}, {report['date']})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"results written to {args.json}")
    return 1 if any(entry.get("error") for entry in report["subjects"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
