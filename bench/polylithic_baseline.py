"""The part of the runtime benchmark that runs INSIDE poly-lithic's venv (.venv-bench-polylithic).

poly-lithic 1.8.0 pins mlflow==2.22.2, so it cannot share the project's venv; bench/runtime_bench.py
(project venv) starts this script with ``.venv-bench-polylithic/bin/python``. Only the stdlib and what
poly-lithic itself installs are imported here — never ``model_deploy``.

    python bench/polylithic_baseline.py run --config CONFIG [--as-released]
        Check the installed version is the one benchmarked, then run poly-lithic's own CLI as a user
        would: ``pl run --config CONFIG --publish``. (The trace API port comes from TRACE_PORT, which
        the bench sets to a free port.)

        One fix is applied unless ``--as-released``: poly-lithic 1.8.0's ``SimplePVAInterface.monitor``
        drops the ``Subscription`` that ``p4p Context.monitor`` returns (it neither returns nor stores
        it). A p4p Subscription and its callback form a reference cycle, so the subscription lives only
        until the next cyclic garbage collection and then stops delivering updates: in event_driven
        mode the released code stops reacting to input PVs within seconds (measured: 3 outputs for 50
        posts, latency samples all time out). The fix keeps those Subscription objects referenced and
        changes nothing else, so the benchmark measures poly-lithic's pipeline rather than this bug.

    python bench/polylithic_baseline.py evaluate-time --model-dir DIR --inputs JSON [--repeat N]
            [--spaced-repeat M --gap-ms LOW,HIGH]
        Load the model through poly-lithic's LocalModelGetter (what its ``model`` module does), evaluate
        it on the given inputs N times back to back, then M times with a random LOW-HIGH ms pause before
        each call, and print one JSON line: the outputs of the first call and the per-call durations in
        seconds of both series. The bench compares the outputs with its own in-process evaluation to
        prove both runtimes load the identical model.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

EXPECTED_VERSION = "1.8.0"
EXIT_WRONG_VERSION = 4


def check_version() -> str:
    installed = version("poly-lithic")
    if installed != EXPECTED_VERSION:
        sys.stderr.write(
            f"polylithic_baseline: poly-lithic {installed} is installed but the benchmark compares against "
            f"{EXPECTED_VERSION}; fix: bash scripts/setup-bench.sh (it pins poly-lithic=={EXPECTED_VERSION})\n"
        )
        sys.exit(EXIT_WRONG_VERSION)
    return installed


def keep_p4p_subscriptions_alive() -> None:
    """Make the Context class poly-lithic's p4p interface uses keep every Subscription it returns."""
    from p4p.client.thread import Context
    from poly_lithic.src.interfaces import p4p_interface

    class SubscriptionKeepingContext(Context):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.kept_subscriptions = []

        def monitor(self, *args, **kwargs):
            subscription = super().monitor(*args, **kwargs)
            self.kept_subscriptions.append(subscription)
            return subscription

    p4p_interface.Context = SubscriptionKeepingContext


def run(config: Path, as_released: bool) -> int:
    check_version()
    if not as_released:
        keep_p4p_subscriptions_alive()
    from poly_lithic.src.cli import cli  # click group; `run` is its model-manager command

    try:
        cli.main(args=["run", "--config", str(config), "--publish"], prog_name="pl", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def evaluate_time(model_dir: Path, inputs: dict[str, float], repeat: int, spaced_repeat: int = 0,
                  gap_ms: tuple[float, float] = (0.0, 0.0)) -> int:
    check_version()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation chatter
    logging.getLogger("model_manager").setLevel(logging.WARNING)
    from poly_lithic.src.model_utils.LocalModelGetter import LocalModelGetter

    getter = LocalModelGetter(
        {"model_path": str(model_dir / "model_factory.py"), "model_factory_class": "ModelFactory"}
    )
    model = getter.get_model()
    first = model.evaluate(dict(inputs))
    rng = random.Random(2)

    def timed(pause: bool) -> float:
        if pause:  # spaced like the bench's latency samples (see runtime_bench.time_evaluate)
            time.sleep(rng.uniform(*gap_ms) / 1000)
        started = time.perf_counter()
        model.evaluate(dict(inputs))
        return time.perf_counter() - started

    durations = [timed(False) for _ in range(repeat)]
    spaced = [timed(True) for _ in range(spaced_repeat)]
    outputs = {name: float(value) for name, value in first.items()}
    sys.stdout.write(json.dumps({"outputs": outputs, "durations": durations, "spaced_durations": spaced}) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run poly-lithic's CLI on a config, publishing outputs")
    run_parser.add_argument("--config", type=Path, required=True)
    run_parser.add_argument("--as-released", action="store_true",
                            help="do not keep p4p subscriptions alive (reproduces the 1.8.0 monitor loss)")
    timing = sub.add_parser("evaluate-time", help="time model.evaluate through poly-lithic's LocalModelGetter")
    timing.add_argument("--model-dir", type=Path, required=True, help="directory holding model_factory.py")
    timing.add_argument("--inputs", required=True, help="JSON object: model input name -> value")
    timing.add_argument("--repeat", type=int, default=300)
    timing.add_argument("--spaced-repeat", type=int, default=0, help="calls with a pause before each")
    timing.add_argument("--gap-ms", default="5,15", help="LOW,HIGH: the pause (ms) before a spaced call")
    args = parser.parse_args(argv)
    if args.command == "run":
        if not args.config.is_file():
            parser.error(f"--config {args.config}: file not found")
        return run(args.config, args.as_released)
    try:
        inputs = json.loads(args.inputs)
    except ValueError as exc:
        parser.error(f"--inputs: not valid JSON ({exc}); expected {{\"name\": value, ...}}")
    if not (args.model_dir / "model_factory.py").is_file():
        parser.error(f"--model-dir {args.model_dir}: no model_factory.py there")
    try:
        low, high = (float(part) for part in args.gap_ms.split(","))
    except ValueError:
        parser.error(f"--gap-ms {args.gap_ms!r}: expected LOW,HIGH in ms, e.g. 5,15")
    return evaluate_time(args.model_dir, inputs, args.repeat, args.spaced_repeat, (low, high))


if __name__ == "__main__":
    sys.exit(main())
