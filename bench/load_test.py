"""Load test: many runtime pipelines (`model-manager` subprocesses) on one machine, fed by one publisher.

    .venv/bin/python bench/load_test.py                      # 20 pipelines x 16 inputs at 100 Hz for 60 s
    .venv/bin/python bench/load_test.py --duration 15 --pipelines 4 --no-readme     # a quick look

What runs (loopback only):
  * ONE publisher process (this file, `publisher` role): a p4p server hosting, per pipeline p, 16 input PVs
    LOAD<id>:P<p>:X<i> and N output PVs LOAD<id>:P<p>:Y<j> (writable). It posts every input PV --rate times
    a second for --duration seconds (each tick posts all pipelines x inputs; a tick that overruns is
    followed at once by the next one, ticks missed entirely are not made up, so `posted` is what was really
    sent), counts the runtimes' writes to the output PVs in the put handler (server side: no client monitor
    coalescing hides or adds any), then posts one final, known value to every input.
  * --pipelines runtimes: `model-manager -l <factory> -c <pipeline p> -p --metrics-port <port>`, each
    reading its 16 inputs with the p4p client, a SimpleTransformer (x_i = input PV), a small model (numpy
    MLP 16 -> 8 -> N by default; `--model lume` uses a lume-model TorchModel, ~680 MB RSS per runtime) and
    p4p puts of the N outputs.

Publisher rate. The publisher stands in for IOCs on other machines, so it must not be what limits the input
rate; 320 PVs x 100 Hz = 32,000 posts/s on a 2-core machine shared with the runtimes (and other work) takes:
  * cheap posts (InputPoster): one reused Value per post instead of p4p wrapping a new one: ~1 us instead
    of ~4 us per post without subscribers; with subscribers the publisher's CPU per post (all its threads)
    fell from ~33 us to ~18 us;
  * pvxs' server I/O thread (PVXTCP) under SCHED_BATCH (batch_schedule_threads): every post wakes it, and
    as a normal thread it preempted the posting thread ~16,000 times a second; batched it keeps its CPU
    share but sends what a tick queued at the next scheduling point: ~18 us -> ~5 us of CPU per post;
  * the runtimes in the orchestrator's session rather than one session each: with autogroup scheduling
    every session is one fair-share entity, and 20 runtime sessions left the publisher 1/21 of the CPU;
  * the publisher (process and session) at --publisher-nice (default -10), and its posting thread
    SCHED_FIFO at --realtime-priority (default 1) during the load. Without real time, a busy machine
    delayed the thread's wake-ups by up to ~100 ms now and then (84-90 Hz in 20 s runs, 100 Hz with it).
    Both need CAP_SYS_NICE (or RLIMIT_RTPRIO); the posting thread gives real time up for good if posting
    ever takes more than half the time, so it can never starve the runtimes' core;
  * --batch-runtime-io (off by default) also batches the runtimes' pvxs client I/O threads (PVXCTCP): the
    fallback without real-time rights, as their wake-ups were most of the preemptions left, but it changes
    the runtimes' scheduling from a deployment's (they then evaluate more: fewer context switches).
The summary's `scheduling` says which of these took effect; the `publisher` line gives the achieved tick
rate, the ticks that overran or were skipped, how long posting took per period and the publisher's CPU.

Accounting (per pipeline, over the whole run, read after the final values were evaluated):
  posted      P  input updates the publisher posted (16 x ticks, + 16 final values), + the 16 initial values
                 each input monitor delivers when it subscribes
  received    R  model_deploy_runtime_updates_received_total: monitor callbacks that reached the runtime.
                 P - R = "monitor-coalesced": PVAccess squashes updates queued for a slow client into the
                 newest one (the newest value is always delivered, so this is coalescing, not loss)
  coalesced   C  model_deploy_runtime_coalesced_updates_total: updates replaced by a newer value of the
                 same input in the runtime's pending set before the worker took it
  batches        R - C updates reached the worker; each batch of them is transformed and evaluated once
  evaluations E  model_deploy_runtime_evaluations_total; "upd/eval" = (R - C) / E
  failed      F  batches that produced no evaluation: errors_total{stage=transform_in|model} +
                 non_finite_inputs_total; and errors_total{stage=transform_out|put} = evaluations whose
                 output was not written
  outputs        writes of the first output PV counted by the publisher (should equal E - put errors)
  lost           = F + output-stage errors + (0 if the final check passed else 1). Latest-value semantics
                 make every update either evaluated or superseded by a newer value of the same PV that
                 was evaluated later (monitor- or runtime-coalesced); an update is lost only if the batch
                 carrying it failed, or if no evaluation followed it. The final check proves the second:
                 after the load, the last output written must equal the model evaluated on the final
                 inputs (computed here independently of the runtime, to 1e-9).
  dead subs      "Lost Subscription update" lines in the runtime's log: p4p 4.3's Context.monitor() assigns
                 Subscription._S only after the C++ monitor started, so a first update arriving in between is
                 dropped and (pvxs signals only on empty -> non-empty) that input never updates again. The
                 runtime's p4p client no longer subscribes through Context.monitor (DirectSubscription in
                 model_deploy/runtime/interfaces/p4p_client.py), so this column must stay 0; it is kept as a
                 regression check. A dead input fails the final check and is counted as lost.
  RSS            VmRSS of the runtime (/proc/PID/status) after --warmup seconds of load and at the end of
                 the load; growth = end - start.

Not a test: prints a table and a summary, writes them to bench/README.md under `## Load test` (replacing
only that section; --no-readme to skip) and exits non-zero only when a pipeline lost updates, failed the
final check or could not be measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
README = Path(__file__).resolve().parent / "README.md"
SECTION = "## Load test"
METRIC_PREFIX = "model_deploy_runtime_"
FINAL_TOLERANCE = 1e-9

# The numpy model: written next to the pipelines as model_factory.py (the runtime imports it by path) and
# imported here from that same file for the reference outputs.
NUMPY_FACTORY = '''"""Small deterministic MLP for the load test: x1..x{n} -> tanh(W1 x + b1) -> W2 h + b2 -> outputs."""
import numpy as np

N_INPUTS = {n}
OUTPUTS = {outputs!r}


class SmallMLP:
    def __init__(self, seed=0, hidden=8):
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(0.0, 0.5, (N_INPUTS, hidden))
        self.b1 = rng.normal(0.0, 0.1, hidden)
        self.w2 = rng.normal(0.0, 0.5, (hidden, len(OUTPUTS)))
        self.b2 = rng.normal(0.0, 0.1, len(OUTPUTS))
        self.input_names = [f"x{{i}}" for i in range(1, N_INPUTS + 1)]
        self.output_names = list(OUTPUTS)

    def evaluate(self, inputs):
        x = np.array([float(inputs[name]) for name in self.input_names])
        y = np.tanh(x @ self.w1 + self.b1) @ self.w2 + self.b2
        return {{name: float(value) for name, value in zip(self.output_names, y)}}


class ModelFactory:
    def get_model(self):
        return SmallMLP()
'''


# -------------------------------------------------------------------------------------- shared bits
def pv_names(prefix: str, pipeline: int, inputs: int, outputs: int) -> tuple[list[str], list[str]]:
    base = f"{prefix}:P{pipeline}"
    return [f"{base}:X{i}" for i in range(1, inputs + 1)], [f"{base}:Y{j}" for j in range(1, outputs + 1)]


def load_value(pipeline: int, index: int, tick: int, rate: float) -> float:
    """Input value at a tick: changes every tick, stays well inside the models' input range."""
    return math.sin(2 * math.pi * (0.5 * tick / rate + 0.13 * index + 0.07 * pipeline)) + 1e-6 * (tick % 1000)


def final_value(pipeline: int, index: int) -> float:
    """The known value every input gets at the end (distinct from any load value pattern)."""
    return round(((pipeline + 1) * 0.37 + index * 0.11) % 3.0 - 1.5, 6)


def pipeline_config(inputs: Sequence[str], outputs: Sequence[str]) -> dict[str, Any]:
    """model_manager (legacy) form: p4p in -> x_i = input -> model -> y_j -> p4p put."""
    symbols = [f"x{i}" for i in range(1, len(inputs) + 1)]
    out_symbols = [f"y{j}" for j in range(1, len(outputs) + 1)]
    return {
        "deployment": {"type": "continuous"},
        "input_data": {"get_method": "p4p",
                       "config": {"variables": {pv: {"proto": "pva", "name": pv} for pv in inputs}}},
        "input_data_to_model": {"type": "SimpleTransformer",
                                "config": {"symbols": list(inputs),
                                           "variables": {s: {"formula": pv} for s, pv in zip(symbols, inputs)}}},
        "outputs_model": {"config": {"variables": {s: {"type": "scalar"} for s in out_symbols}}},
        "output_model_to_data": {"type": "SimpleTransformer",
                                 "config": {"symbols": out_symbols,
                                            "variables": {pv: {"formula": s} for s, pv in zip(out_symbols, outputs)}}},
        "output_data_to": {"put_method": "p4p",
                           "config": {"variables": {pv: {"proto": "pva", "name": pv} for pv in outputs}}},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------------- publisher role
class InputPoster:
    """Posts floats to NTScalar SharedPVs for the cost of one field store and one C++ call each.

    `SharedPV.post(x, timestamp=t)` builds a fresh Value in Python on every call (NTScalar.wrap, then
    _annotate for the stamp; ~4 us). pvxs' SharedPV::post copies the Value it is given (the marked fields
    into the PV's current value, and one clone queued for the subscribers), so one Value can serve every
    post: its timeStamp is set once per tick, its `value` field before each post, and the post goes straight
    to the extension type's post (p4p's Python post() would only wrap it again). Fields stay marked as
    changed once set, so every post carries value and timeStamp. pvxs requires the posted Value's type to be
    the PV's own: create the PVs with the same NTScalar instance as the poster.
    """

    def __init__(self, nt: Any):
        from p4p import _p4p

        self._post = _p4p.SharedPV.post  # releases the GIL while pvxs queues the update
        self._value = nt.wrap(0.0)

    def stamp(self, seconds: float) -> None:
        whole, fraction = divmod(seconds, 1.0)
        self._value["timeStamp.secondsPastEpoch"] = int(whole)
        self._value["timeStamp.nanoseconds"] = int(fraction * 1e9)

    def post_many(self, pvs: Sequence[Any], values: Sequence[float]) -> None:
        value, post = self._value, self._post
        for pv, x in zip(pvs, values):
            value["value"] = x
            post(pv, value)


def set_own_nice(nice: int) -> str:
    """Set this process's nice value (before it starts threads: they inherit it); says what it managed.

    With autogroup scheduling (Linux' default for desktops and many servers) each session is one fair-share
    entity and a thread's own nice value only counts inside its session, so the session's autogroup gets
    the nice value too. Both need CAP_SYS_NICE to go below 0.
    """
    if nice == 0:
        return "publisher priority left at default (--publisher-nice 0)"
    done = []
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        done.append("process")
    except OSError:
        pass
    autogroup = Path("/proc/self/autogroup")
    own_session = os.getsid(0) == os.getpid()  # never re-nice a session we merely belong to (a shell's)
    try:
        if (own_session and autogroup.exists()
                and Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"):
            autogroup.write_text(str(nice))
            done.append("session autogroup")
    except OSError:
        pass
    if not done:
        return f"publisher priority NOT raised (nice {nice} needs CAP_SYS_NICE)"
    return f"publisher at nice {nice} ({' and '.join(done)})"


def set_realtime(priority: int) -> bool:
    """SCHED_FIFO at `priority` for the calling thread only, or SCHED_OTHER for 0; False if not permitted
    (needs CAP_SYS_NICE or RLIMIT_RTPRIO). Threads started afterwards inherit it: call it once the
    publisher's other threads run."""
    policy = os.SCHED_FIFO if priority > 0 else os.SCHED_OTHER
    try:
        os.sched_setscheduler(0, policy, os.sched_param(max(priority, 0)))
    except OSError:
        return False
    return True


def batch_schedule_threads(pid: int | str, thread_name: str) -> int:
    """Put the threads named `thread_name` of process `pid` under SCHED_BATCH; returns how many.

    Used for pvxs' TCP I/O threads (PVXTCP in the publisher's server, PVXCTCP in the runtimes' clients):
    every post wakes the sender's thread and every update sent wakes a receiver's, and a woken normal thread
    preempts whatever runs on its core: the publisher's posting thread, ~16,000 times a second. A
    SCHED_BATCH thread gets the same CPU share but does not preempt on wakeup, so it handles what queued up
    at the next scheduling point, in one go. Any user may move their own threads to SCHED_BATCH; threads
    those threads start later inherit it.
    """
    if not hasattr(os, "sched_setscheduler"):
        return 0
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == thread_name:
                os.sched_setscheduler(int(task.name), os.SCHED_BATCH, os.sched_param(0))
                count += 1
        except (OSError, ValueError):  # the thread ended meanwhile
            pass
    return count


def run_publisher(spec: dict[str, Any]) -> int:
    """Host all PVs, wait for `go` on stdin, post the load, count output writes, answer `snapshot`s."""
    nice_outcome = set_own_nice(spec["publisher_nice"])  # first: the threads p4p starts inherit it
    from p4p.nt import NTScalar
    from p4p.server import Server
    from p4p.server.raw import SharedPV as DirectSharedPV
    from p4p.server.thread import SharedPV

    pipelines, inputs, outputs = spec["pipelines"], spec["inputs"], spec["outputs"]
    rate, duration, warmup = spec["rate"], spec["duration"], spec["warmup"]
    input_type = NTScalar("d")  # shared by all inputs and the poster (see InputPoster)
    lock = threading.Lock()
    output_writes = [[0] * outputs for _ in range(pipelines)]
    last_outputs: list[list[float | None]] = [[None] * outputs for _ in range(pipelines)]
    input_pvs: list[list[SharedPV]] = []
    providers: dict[str, Any] = {}

    class OutputCounter:
        """Put handler of one output PV. It runs directly on pvxs' I/O thread (p4p.server.raw, no hop to a
        worker thread): counting is quick. The PV's own value is not updated (stays 0.0): the runtimes only
        write it (put without get), and the count and last value are kept here."""

        def __init__(self, p: int, j: int):
            self.p, self.j = p, j

        def put(self, pv: Any, op: Any) -> None:
            value = float(op.value())
            with lock:
                output_writes[self.p][self.j] += 1
                last_outputs[self.p][self.j] = value
            op.done()

    for p in range(pipelines):
        in_names, out_names = pv_names(spec["prefix"], p, inputs, outputs)
        row = []
        for i, name in enumerate(in_names):
            pv = SharedPV(nt=input_type, initial=load_value(p, i, 0, rate))
            providers[name] = pv
            row.append(pv)
        input_pvs.append(row)
        for j, name in enumerate(out_names):
            providers[name] = DirectSharedPV(handler=OutputCounter(p, j), nt=NTScalar("d"), initial=0.0)

    server = Server(providers=[providers], isolate=True)
    batched_io_threads = batch_schedule_threads("self", "PVXTCP")
    poster = InputPoster(input_type)
    port = server.conf()["EPICS_PVA_SERVER_PORT"]
    emit("ready", env={"EPICS_PVA_NAME_SERVERS": f"127.0.0.1:{port}", "EPICS_PVA_ADDR_LIST": "",
                       "EPICS_PVA_AUTO_ADDR_LIST": "NO"}, pvs=len(providers),
         scheduling=f"{nice_outcome}, {batched_io_threads} pvxs server I/O thread(s) SCHED_BATCH")

    commands: queue.Queue[str] = queue.Queue()

    def read_commands() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("stop")  # the orchestrator went away

    threading.Thread(target=read_commands, daemon=True).start()

    def next_command() -> str:
        try:
            return commands.get(timeout=3600)
        except queue.Empty:
            return "stop"

    def snapshot() -> dict[str, Any]:
        with lock:
            return {"writes": [row[0] for row in output_writes], "writes_all": [sum(row) for row in output_writes],
                    "last": [list(row) for row in last_outputs]}

    try:
        if next_command() != "go":
            return 0
        posted = [0] * pipelines
        tick, late_ticks, posting_seconds = 0, 0, 0.0
        priority = spec["realtime_priority"]
        realtime = priority > 0 and set_realtime(priority)
        posting_policy = (f"posting thread SCHED_FIFO {priority}" if realtime
                          else "posting thread SCHED_OTHER" if priority <= 0
                          else f"posting thread NOT real-time (SCHED_FIFO {priority} needs CAP_SYS_NICE)")
        started, cpu_started = time.monotonic(), time.process_time()
        warmup_sent = False
        while True:
            now = time.monotonic()
            elapsed = now - started
            if elapsed >= duration:
                break
            if not warmup_sent and elapsed >= warmup:
                emit("warmup_done", elapsed=elapsed, posted=list(posted))
                warmup_sent = True
            tick = int(elapsed * rate)
            poster.stamp(time.time())
            for p, pvs in enumerate(input_pvs):
                poster.post_many(pvs, [load_value(p, i, tick, rate) for i in range(inputs)])
                posted[p] += inputs
            done = time.monotonic()
            posting_seconds += done - now
            if realtime and done - started > 1.0 and posting_seconds > 0.5 * (done - started):
                set_realtime(0)  # a real-time thread that cannot keep up would monopolise a core
                realtime = False
                posting_policy += f", given up after {done - started:.0f} s (posting took over half the time)"
            pause = started + (tick + 1) / rate - done
            if pause > 0:
                time.sleep(pause)
            else:
                late_ticks += 1  # overran the period: the next tick is simply the current one
        elapsed = time.monotonic() - started
        if realtime:
            set_realtime(0)
        emit("load_done", elapsed=elapsed, posted=list(posted), late_ticks=late_ticks,
             cpu_seconds=time.process_time() - cpu_started, posting_seconds=posting_seconds,
             posting_policy=posting_policy, **snapshot())
        poster.stamp(time.time())
        for p, pvs in enumerate(input_pvs):
            poster.post_many(pvs, [final_value(p, i) for i in range(inputs)])
            posted[p] += inputs
        emit("final_posted", posted=list(posted))
        while next_command() == "snapshot":  # anything else (stop, EOF) ends the publisher
            emit("snapshot", **snapshot())
        return 0
    finally:
        server.stop()


# -------------------------------------------------------------------------------- orchestrator role
@dataclass
class Runtime:
    index: int
    proc: subprocess.Popen
    metrics_port: int
    log_path: Path
    rss_start_kb: int | None = None
    rss_end_kb: int | None = None
    cpu_start: float | None = None
    cpu_end: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def read_status_kb(pid: int, key: str = "VmRSS") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def scrape(port: int) -> dict[str, float]:
    """Counters of one runtime's /metrics, keyed `name` or `name{label=value}`."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def metric(values: Mapping[str, float], name: str, **labels: str) -> float:
    key = METRIC_PREFIX + name
    if labels:
        key += "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
    return values.get(key, 0.0)


class Publisher:
    def __init__(self, spec: dict[str, Any], run_dir: Path):
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.log = open(run_dir / "publisher.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "publisher", json.dumps(spec)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass
        self.events.put({"event": "exited"})

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"publisher: no {event!r} within {timeout:.0f}s") from None
            if message["event"] == event:
                return message
            if message["event"] == "exited":
                raise RuntimeError(f"publisher exited (code {self.proc.poll()}) before {event!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("stop")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


def write_model(run_dir: Path, kind: str, inputs: int, outputs: Sequence[str]) -> tuple[str, Any]:
    """(the runtime's -l argument, reference(input dict) -> output dict)."""
    if kind == "lume":
        sys.path.insert(0, str(REPO_ROOT))
        from tests.fixtures.demo_models import make_lume_torch_model, reference_torch_outputs

        path = make_lume_torch_model(run_dir / "model", n_inputs=inputs, outputs=tuple(outputs))
        return str(path), lambda values: reference_torch_outputs(values, inputs, tuple(outputs))
    path = run_dir / "model_factory.py"
    path.write_text(NUMPY_FACTORY.format(n=inputs, outputs=tuple(outputs)))
    spec = importlib.util.spec_from_file_location("load_test_model_factory", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.ModelFactory().get_model()
    return str(path), model.evaluate


def start_runtimes(args: argparse.Namespace, run_dir: Path, model_arg: str, env: Mapping[str, str],
                   prefix: str) -> list[Runtime]:
    import yaml

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("EPICS_PVA", "MLFLOW_"))}
    base_env.update(env)
    executable = str(Path(sys.executable).parent / "model-manager")
    runtimes = []
    for p in range(args.pipelines):
        in_names, out_names = pv_names(prefix, p, args.inputs, args.outputs)
        config = run_dir / f"pipeline-{p}.yaml"
        config.write_text(yaml.safe_dump(pipeline_config(in_names, out_names), sort_keys=False))
        port = free_port()
        log_path = run_dir / f"runtime-{p}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [executable, "-l", model_arg, "-c", str(config), "-p", "--metrics-port", str(port),
                 "--metrics-host", "127.0.0.1"],
                # Own process group (killpg) but the orchestrator's session: with autogroup scheduling each
                # session is one fair-share entity, and 20 sessions of runtimes starved the publisher's one.
                stdout=log, stderr=subprocess.STDOUT, env=base_env, cwd=run_dir, process_group=0,
            )
        runtimes.append(Runtime(p, proc, port, log_path))
    return runtimes


def stop_runtimes(runtimes: Sequence[Runtime]) -> None:
    for runtime in runtimes:
        if runtime.proc.poll() is None:
            os.killpg(runtime.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for runtime in runtimes:
        try:
            runtime.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(runtime.proc.pid, signal.SIGKILL)
            runtime.proc.wait(timeout=10)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(runtimes: Sequence[Runtime], timeout: float) -> float:
    started = time.monotonic()
    pending = list(runtimes)
    while pending:
        for runtime in list(pending):
            if runtime.proc.poll() is not None:
                raise RuntimeError(f"runtime {runtime.index} exited with {runtime.proc.returncode}:\n"
                                   f"{log_tail(runtime.log_path)}")
            if ready(runtime.metrics_port):
                pending.remove(runtime)
        if pending and time.monotonic() - started > timeout:
            raise RuntimeError(f"{len(pending)} runtime(s) not ready within {timeout:.0f}s, e.g. "
                               f"{pending[0].index}:\n{log_tail(pending[0].log_path)}")
        time.sleep(0.5)
    return time.monotonic() - started


@dataclass
class Row:
    pipeline: int
    posted: int
    received: float
    monitor_coalesced: float
    coalesced: float
    evaluations: float
    updates_per_evaluation: float
    outputs_seen: int
    failed_batches: float
    output_errors: float
    final_ok: bool
    final_detail: str
    rss_start_mb: float | None
    rss_end_mb: float | None
    cpu_seconds: float | None
    dead_subscriptions: list[str] = field(default_factory=list)

    @property
    def lost(self) -> float:
        return self.failed_batches + self.output_errors + (0 if self.final_ok else 1)

    @property
    def rss_growth_mb(self) -> float | None:
        if self.rss_start_mb is None or self.rss_end_mb is None:
            return None
        return self.rss_end_mb - self.rss_start_mb


def final_check(last: Sequence[float | None], expected: Mapping[str, float], out_names: Sequence[str]
                ) -> tuple[bool, str]:
    values = list(expected.values())
    for name, got, want in zip(out_names, last, values):
        if got is None or not math.isclose(got, want, rel_tol=FINAL_TOLERANCE, abs_tol=FINAL_TOLERANCE):
            return False, f"{name}={got} expected {want}"
    return True, "ok"


def dead_subscriptions(log_path: Path) -> list[str]:
    """PV names p4p reported as 'Lost Subscription update for NAME' (see the module docstring)."""
    marker = "Lost Subscription update for "
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    return sorted({line.split(marker, 1)[1].strip() for line in text.splitlines() if marker in line})


def build_rows(args: argparse.Namespace, runtimes: Sequence[Runtime], posted: Sequence[int],
               snapshot: Mapping[str, Any], references: Sequence[Mapping[str, float]], prefix: str) -> list[Row]:
    rows = []
    for runtime in runtimes:
        m, p = runtime.metrics, runtime.index
        received = metric(m, "updates_received_total")
        coalesced = metric(m, "coalesced_updates_total")
        evaluations = metric(m, "evaluations_total")
        failed = (metric(m, "errors_total", stage="transform_in") + metric(m, "errors_total", stage="model")
                  + metric(m, "non_finite_inputs_total"))
        output_errors = metric(m, "errors_total", stage="transform_out") + metric(m, "errors_total", stage="put")
        _, out_names = pv_names(prefix, p, args.inputs, args.outputs)
        ok, detail = final_check(snapshot["last"][p], references[p], out_names)
        cpu = (runtime.cpu_end - runtime.cpu_start) if runtime.cpu_end is not None and runtime.cpu_start is not None \
            else None
        sent = posted[p] + args.inputs  # + the current value each monitor delivers on subscribe
        rows.append(Row(
            pipeline=p, posted=sent, received=received, monitor_coalesced=sent - received,
            coalesced=coalesced, evaluations=evaluations,
            updates_per_evaluation=(received - coalesced) / evaluations if evaluations else float("nan"),
            outputs_seen=snapshot["writes"][p], failed_batches=failed, output_errors=output_errors,
            final_ok=ok, final_detail=detail,
            rss_start_mb=runtime.rss_start_kb / 1024 if runtime.rss_start_kb else None,
            rss_end_mb=runtime.rss_end_kb / 1024 if runtime.rss_end_kb else None,
            cpu_seconds=cpu, dead_subscriptions=dead_subscriptions(runtime.log_path),
        ))
    return rows


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def render_table(rows: Sequence[Row]) -> str:
    header = ("| pipe | posted | received | monitor-coalesced | runtime-coalesced | evaluations | upd/eval "
              "| outputs seen | lost | final | dead subs | RSS start MB | RSS end MB | growth MB | CPU s |")
    lines = [header, "|" + "---|" * 15]
    for r in rows:
        lines.append(
            f"| {r.pipeline} | {r.posted} | {r.received:.0f} | {r.monitor_coalesced:.0f} | {r.coalesced:.0f} "
            f"| {r.evaluations:.0f} | {r.updates_per_evaluation:.2f} | {r.outputs_seen} | {r.lost:.0f} "
            f"| {'ok' if r.final_ok else 'FAIL: ' + r.final_detail} | {len(r.dead_subscriptions)} "
            f"| {_mb(r.rss_start_mb)} | {_mb(r.rss_end_mb)} "
            f"| {_mb(r.rss_growth_mb)} | {'n/a' if r.cpu_seconds is None else f'{r.cpu_seconds:.1f}'} |")
    return "\n".join(lines)


def render_summary(args: argparse.Namespace, rows: Sequence[Row], load: Mapping[str, Any], startup: float) -> str:
    n = len(rows)
    posted = sum(r.posted for r in rows)
    evaluations = sum(r.evaluations for r in rows)
    elapsed = load["elapsed"]
    growths = [r.rss_growth_mb for r in rows if r.rss_growth_mb is not None]
    ends = [r.rss_end_mb for r in rows if r.rss_end_mb is not None]
    ticks = load["posted"][0] / args.inputs if load["posted"] else 0
    achieved = ticks / elapsed if elapsed else 0.0
    posting_ms = load["posting_seconds"] / max(ticks, 1) * 1e3
    scheduled_ticks = math.ceil(args.duration * args.rate)
    cpu = [r.cpu_seconds for r in rows if r.cpu_seconds is not None]
    lines = [
        f"- machine: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
        f"load average at start {load['loadavg_start']}",
        f"- setup: {n} pipelines x {args.inputs} inputs -> {args.model} model -> {args.outputs} outputs, inputs "
        f"posted at {args.rate:g} Hz for {args.duration:g} s by one publisher process; all runtimes ready "
        f"{startup:.0f} s after start; scheduling: {load['scheduling']}",
        f"- publisher: {ticks:.0f} of {scheduled_ticks} ticks in {elapsed:.1f} s = {achieved:.1f} Hz achieved "
        f"({load['late_ticks']} overran their period, {max(scheduled_ticks - ticks, 0):.0f} skipped; posting took "
        f"{posting_ms:.1f} ms of each {1e3 / args.rate:g} ms period on average); {posted} input updates posted "
        "in total; "
        f"publisher CPU {load['cpu_seconds'] / elapsed:.2f} cores",
        f"- runtimes: {evaluations:.0f} evaluations = {evaluations / elapsed:.0f}/s in total, "
        f"{evaluations / elapsed / n:.1f}/s per pipeline; {sum(r.received for r in rows) / max(posted, 1):.1%} "
        f"of the posted updates reached a runtime (the rest was coalesced by the PVAccess monitors), "
        f"{sum(r.received - r.coalesced for r in rows) / max(evaluations, 1):.2f} updates per evaluation"
        + (f"; runtime CPU {sum(cpu) / elapsed:.2f} cores together ({sum(cpu) / len(cpu) / elapsed:.1%} of a core "
           "each)" if cpu else ""),
        f"- lost evaluations beyond coalescing: {sum(r.lost for r in rows):.0f}; final values evaluated and "
        f"written by {sum(r.final_ok for r in rows)}/{n} pipelines"
        + (f"; dead input subscriptions (p4p subscribe race, see the docstring): "
           f"{', '.join(pv for r in rows for pv in r.dead_subscriptions)}"
           if any(r.dead_subscriptions for r in rows) else "; no dead input subscriptions"),
        f"- RSS per runtime: {min(ends):.0f}-{max(ends):.0f} MB at the end; growth over the load "
        f"{min(growths):+.1f} to {max(growths):+.1f} MB (mean {sum(growths) / len(growths):+.1f} MB)"
        if ends and growths else "- RSS: not measured",
    ]
    if achieved < 0.9 * args.rate:
        lines.append(
            f"- note: the one publisher process could not post {n * args.inputs} PVs at {args.rate:g} Hz on this "
            f"machine ({achieved:.1f} Hz achieved): it, not the runtimes, set the input rate"
            + ("; the runtimes evaluated everything that arrived" if not any(r.lost for r in rows) else ""))
    lines = [line for line in lines if line]
    return "\n".join(lines)


def update_readme(text: str) -> None:
    """Replace this section (or append it); every other section stays byte-identical."""
    current = README.read_text() if README.exists() else ""
    start = current.find(f"\n{SECTION}\n")
    if start == -1 and current.startswith(f"{SECTION}\n"):
        start = 0
    section = f"{SECTION}\n\n{text.strip()}\n"
    if start == -1:
        README.write_text(current.rstrip("\n") + "\n\n" + section)
        return
    start += 0 if start == 0 else 1
    end = current.find("\n## ", start + len(SECTION))
    rest = current[end + 1:] if end != -1 else ""
    README.write_text(current[:start] + section + ("\n" + rest if rest else ""))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", type=int, default=20)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--outputs", type=int, default=2)
    parser.add_argument("--rate", type=float, default=100.0, help="posts per input PV per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the start RSS")
    parser.add_argument("--model", choices=("numpy", "lume"), default="numpy")
    parser.add_argument("--publisher-nice", type=int, default=-10,
                        help="nice value of the publisher and its session (below 0 needs CAP_SYS_NICE; 0: leave it)")
    parser.add_argument("--realtime-priority", type=int, default=1,
                        help="SCHED_FIFO priority of the publisher's posting thread during the load (0: none)")
    parser.add_argument("--batch-runtime-io", action="store_true",
                        help="also run the runtimes' pvxs client I/O threads SCHED_BATCH (see the docstring)")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the run dir (configs, logs)")
    parser.add_argument("--no-readme", action="store_true", help="do not write bench/README.md")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON here")
    args = parser.parse_args(argv)
    if min(args.pipelines, args.inputs, args.outputs) < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--pipelines/--inputs/--outputs must be >= 1, --rate and --duration > 0")
    if not 0 <= args.warmup < args.duration:
        parser.error("--warmup must be >= 0 and shorter than --duration")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["publisher"]:
        return run_publisher(json.loads(argv[1]))
    args = parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="mdo-load-"))
    prefix = f"LOAD{uuid.uuid4().hex[:6].upper()}"
    outputs = [f"y{j}" for j in range(1, args.outputs + 1)]
    spec = {"pipelines": args.pipelines, "inputs": args.inputs, "outputs": args.outputs, "rate": args.rate,
            "duration": args.duration, "warmup": args.warmup, "prefix": prefix, "publisher_nice": args.publisher_nice,
            "realtime_priority": args.realtime_priority}
    print(f"load test: {args.pipelines} pipelines x {args.inputs} inputs at {args.rate:g} Hz for {args.duration:g} s "
          f"({args.model} model); run dir {run_dir}", flush=True)
    model_arg, reference = write_model(run_dir, args.model, args.inputs, outputs)
    references = [reference({f"x{i + 1}": final_value(p, i) for i in range(args.inputs)})
                  for p in range(args.pipelines)]
    publisher = Publisher(spec, run_dir)
    runtimes: list[Runtime] = []
    code = 0
    try:
        ready_event = publisher.wait("ready", 60)
        env = ready_event["env"]
        runtimes = start_runtimes(args, run_dir, model_arg, env, prefix)
        startup = wait_ready(runtimes, args.startup_timeout)
        batched_client_threads = (sum(batch_schedule_threads(r.proc.pid, "PVXCTCP") for r in runtimes)
                                  if args.batch_runtime_io else 0)
        print(f"all {len(runtimes)} runtimes ready after {startup:.0f} s; posting for {args.duration:g} s", flush=True)
        loadavg_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
        for runtime in runtimes:
            runtime.cpu_start = cpu_seconds(runtime.proc.pid)
        publisher.send("go")
        publisher.wait("warmup_done", args.warmup + 60)
        for runtime in runtimes:
            runtime.rss_start_kb = read_status_kb(runtime.proc.pid)
        load = publisher.wait("load_done", args.duration + 120)
        for runtime in runtimes:
            runtime.rss_end_kb = read_status_kb(runtime.proc.pid)
            runtime.cpu_end = cpu_seconds(runtime.proc.pid)
        load["loadavg_start"] = loadavg_start
        load["scheduling"] = (f"{ready_event['scheduling']}, {load['posting_policy']}; runtimes share one "
                              f"session, {batched_client_threads} of their pvxs client I/O threads SCHED_BATCH")
        posted = publisher.wait("final_posted", 60)["posted"]
        # Drain: wait until every pipeline wrote the final values (or the deadline).
        deadline = time.monotonic() + 60
        while True:
            publisher.send("snapshot")
            snapshot = publisher.wait("snapshot", 30)
            done = all(final_check(snapshot["last"][p], references[p],
                                   pv_names(prefix, p, args.inputs, args.outputs)[1])[0]
                       for p in range(args.pipelines))
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # let the counters settle (the final batch's metrics follow its put)
        publisher.send("snapshot")
        snapshot = publisher.wait("snapshot", 30)
        for runtime in runtimes:
            runtime.metrics = scrape(runtime.metrics_port)
        rows = build_rows(args, runtimes, posted, snapshot, references, prefix)
        table, summary = render_table(rows), render_summary(args, rows, load, startup)
        print()
        print(table)
        print()
        print(summary)
        if any(r.lost for r in rows):
            code = 1
        if not args.no_readme:
            shown = [a for a in argv if a not in ("--keep", "--no-readme")]
            if "--json" in shown:  # where this run put its JSON is no part of the result
                index = shown.index("--json")
                del shown[index:index + 2]
            command = "`" + " ".join([".venv/bin/python bench/load_test.py", *shown]) + "`"
            update_readme(f"Run: {command} ({time.strftime('%Y-%m-%d %H:%M %Z')}). Accounting: see the "
                          f"docstring of bench/load_test.py.\n\n{summary}\n\n{table}\n")
            print(f"\nwritten to {README} under '{SECTION}'")
        if args.json:
            args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "load": load,
                                             "rows": [r.__dict__ | {"lost": r.lost} for r in rows]},
                                            indent=2, default=str))
    except RuntimeError as exc:
        print(f"load test: error: {exc}", file=sys.stderr)
        code = 2
    finally:
        stop_runtimes(runtimes)
        publisher.stop()
        if args.keep or code:
            print(f"run dir kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
