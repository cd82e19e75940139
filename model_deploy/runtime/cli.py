"""`model-manager` / `model_manager`: run one model against the control system.

Both spellings of the seed's interface work:

    model-manager -n NAME -v VERSION [-c pipeline.yaml] [-p] ...      # bare flags mean `run`
    model-manager run -n NAME -v VERSION ...

Other subcommands (deploy / status / terminate) come from the modules in ``SUBCOMMAND_MODULES``.

Exit codes: 0 ok (also after SIGTERM/SIGINT, even while the model is still loading), 1 run-time
failure (``--once`` could not evaluate, interfaces cannot start, the worker died), 2 bad usage or
bad pipeline config, 3 model could not be loaded (not found, MLflow down). Errors are one clear
message on stderr; tracebacks only with ``-d``.

Without ``-p`` nothing is written to the control system: outputs are logged (INFO at most every
10 s, DEBUG for each evaluation) and no output interface is built at all.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_MODEL = 3
DEFAULT_METRICS_PORT = 9100

logger = logging.getLogger("model_deploy.runtime.cli")

# Modules adding subcommands: each has add_subcommands(subparsers) and run(args) -> int.
# (model_deploy.deployctl: deploy / status / terminate.)
SUBCOMMAND_MODULES: tuple[str, ...] = ("model_deploy.deployctl",)


class CliFailure(Exception):
    """An expected failure: reported as one line on stderr with the given exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- argument parsing
def configure_run_parser(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("model source (MLflow registry, or a local model with -l)")
    source.add_argument("-n", "--model_name", "--model-name", dest="model_name",
                        help="registered model name in MLflow")
    source.add_argument("-v", "--model_version", "--model-version", dest="model_version",
                        help="model version number or alias (e.g. 3 or champion)")
    source.add_argument("-l", "--local", dest="local",
                        help="local model directory/factory (alternative to MLflow); requires -c")
    parser.add_argument("-e", "--env", dest="env_file",
                        help="JSON file of environment variables applied before anything else")
    parser.add_argument("-c", "--configs", dest="config",
                        help="pipeline YAML; optional when the MLflow model carries pv_mappings.yaml")
    parser.add_argument("-p", "--publish", action="store_true",
                        help="write outputs to the control system (default: dry run, outputs are only logged)")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("--once", action="store_true",
                        help="read inputs once, evaluate once, (publish with -p), print outputs as JSON, exit")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                        help=f"port of /metrics, /healthz, /readyz (default {DEFAULT_METRICS_PORT}; 0 disables)")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics server binds")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-manager",
        description="Deploy an ML model against EPICS. Bare flags (model-manager -n NAME -v 1 ...) mean `run`.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = subparsers.add_parser("run", help="run the pipeline (the default command)")
    configure_run_parser(run)
    run.set_defaults(handler=run_command)
    for module_name in SUBCOMMAND_MODULES:
        _add_module_subcommands(subparsers, module_name)
    return parser


def _add_module_subcommands(subparsers: argparse._SubParsersAction, module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # a slimmer image may not ship it; `run` must still work
        logger.debug("subcommands of %s unavailable: %s", module_name, exc)
        return
    before = set(subparsers.choices)
    module.add_subcommands(subparsers)
    for name in set(subparsers.choices) - before:
        # the module's run() wraps its handlers with its own error reporting
        subparsers.choices[name].set_defaults(runner=module.run)


def subcommand_names(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def normalise_argv(argv: Sequence[str], commands: set[str] | None = None) -> list[str]:
    """Bare flags mean `run`; top-level -h/--help still lists the subcommands."""
    argv = list(argv)
    known = commands if commands is not None else subcommand_names(build_parser())
    if not argv or (argv[0] not in known and argv[0] not in ("-h", "--help")):
        return ["run", *argv]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = normalise_argv(sys.argv[1:] if argv is None else argv, subcommand_names(parser))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error / help
        return int(exc.code or 0)
    runner = getattr(args, "runner", None) or getattr(args, "handler", None)
    if runner is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    return runner(args)


# --------------------------------------------------------------------------- run
def run_command(args: argparse.Namespace) -> int:
    debug = bool(getattr(args, "debug", False))
    try:
        apply_env_file(args.env_file)  # first: it may carry MLFLOW_TRACKING_URI, EPICS_PVA_*, ...
        configure_logging(debug=debug, fmt=args.log_format)
        validate_run_args(args)
        return _run(args)
    except CliFailure as failure:
        if debug and failure.__cause__ is not None:
            logger.error("%s", failure, exc_info=failure.__cause__)
        _report(failure)
        return failure.exit_code
    except Exception as exc:  # last resort: still one line, traceback only with -d
        if debug:
            logger.exception("unexpected error")
        sys.stderr.write(f"model-manager: error: unexpected {type(exc).__name__}: {exc}\n")
        return EXIT_RUNTIME


def _report(failure: CliFailure) -> None:
    sys.stderr.write(f"model-manager: error: {failure}\n")
    sys.stderr.flush()


def apply_env_file(path: str | None) -> None:
    if not path:
        return
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CliFailure(f"--env {path}: file not found; pass a JSON file of environment variables", EXIT_CONFIG)
    except (OSError, ValueError) as exc:
        raise CliFailure(f"--env {path}: not valid JSON ({exc}); expected {{\"NAME\": \"value\", ...}}",
                         EXIT_CONFIG) from exc
    if not isinstance(data, dict):
        raise CliFailure(f"--env {path}: expected a JSON object of NAME: value pairs, got {type(data).__name__}",
                         EXIT_CONFIG)
    for key, value in data.items():
        if value is None:
            continue
        os.environ[str(key)] = value if isinstance(value, str) else json.dumps(value)


def validate_run_args(args: argparse.Namespace) -> None:
    if args.local and args.model_name:
        raise CliFailure("-l/--local and -n/--model_name are alternatives; pass only one", EXIT_CONFIG)
    if args.local and not args.config:
        raise CliFailure("-l/--local needs a pipeline config: add -c pipeline.yaml", EXIT_CONFIG)
    if not args.local and not args.model_name:
        raise CliFailure("no model given: pass -n NAME -v VERSION (MLflow) or -l PATH -c pipeline.yaml",
                         EXIT_CONFIG)
    if args.model_name and not args.model_version:
        raise CliFailure(f"-v/--model_version is required with -n {args.model_name} (a number or an alias)",
                         EXIT_CONFIG)
    if not 0 <= args.metrics_port <= 65535:
        raise CliFailure(f"--metrics-port {args.metrics_port}: must be 0 (disabled) or 1-65535", EXIT_CONFIG)


class RuntimeState:
    """What the health endpoints look at; the pipeline is attached once the model is loaded."""

    def __init__(self) -> None:
        self.pipeline: Any = None

    def liveness(self):
        from model_deploy.runtime.metrics import HealthReport

        return self.pipeline.liveness() if self.pipeline is not None else HealthReport(ok=True)

    def readiness(self):
        from model_deploy.runtime.metrics import readiness_report

        if self.pipeline is not None:
            return self.pipeline.readiness()
        return readiness_report(model_loaded=False, connections={})


def _run(args: argparse.Namespace) -> int:
    from model_deploy.runtime.metrics import RuntimeMetrics

    metrics = RuntimeMetrics()
    state = RuntimeState()
    pipeline = None
    server = None
    # Signal handlers first: Kubernetes may stop a pod while the model is still downloading.
    with StopSignals() as signals:
        try:
            server = start_metrics_server(args, metrics, state)
            # An explicit -c is validated before the (possibly slow) model download.
            config = load_pipeline_config(args.config) if args.config else None
            model = load_model_from_args(args)
            model_name = args.model_name or args.local
            version = getattr(model, "version", None) or args.model_version
            logger.info("resolved model %s version %s (%s; %s)", model_name, version or "(local, unversioned)",
                        getattr(model, "source", "?"), getattr(model, "kind", type(model).__name__))
            metrics.set_model(model_name, None if version is None else str(version), getattr(model, "source", None))
            if config is None:
                config = config_from_model(model, model_name)
            pipeline = build_pipeline(config, model, args, metrics)
            state.pipeline = pipeline
            if args.once:
                return run_once(pipeline)
            signals.interrupt = False  # from here on the stop event ends run_forever gracefully
            logger.info("pipeline running (publish=%s)", pipeline.publish)
            pipeline.run_forever(signals.stop)
            if not signals.stop.is_set():  # run_forever returned on its own: the worker died
                raise CliFailure("pipeline worker stopped unexpectedly; see the log above", EXIT_RUNTIME)
            return EXIT_OK
        except StopRequested as request:
            logger.info("received %s before the pipeline was running: exiting", request)
            return EXIT_OK
        finally:
            if pipeline is not None:
                pipeline.stop()
            if server is not None:
                server.stop()


class StopRequested(BaseException):
    """Raised from the signal handler while starting up; BaseException so `except Exception` in
    loaders cannot swallow it (like KeyboardInterrupt)."""


class StopSignals:
    """SIGTERM/SIGINT handling: set ``stop``; while ``interrupt`` is True also abort start-up.

    Installs nothing outside the main thread (signal handlers can only be set there).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.interrupt = True
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        logger.info("received %s: stopping", name)
        self.stop.set()
        if self.interrupt:
            self.interrupt = False  # a second signal must not interrupt the clean-up
            raise StopRequested(name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def start_metrics_server(args: argparse.Namespace, metrics: Any, state: RuntimeState):
    from model_deploy.runtime.metrics import MetricsServer

    if args.metrics_port == 0 or args.once:
        return None
    try:
        return MetricsServer(metrics, args.metrics_port, host=args.metrics_host,
                             liveness=state.liveness, readiness=state.readiness).start()
    except OSError as exc:
        raise CliFailure(
            f"--metrics-port {args.metrics_port}: cannot listen ({exc.strerror or exc}); "
            "pick a free port or 0 to disable", EXIT_CONFIG) from exc


def load_pipeline_config(source: Any, origin: str = "-c/--configs"):
    from model_deploy.runtime.config import load_config
    from model_deploy.runtime.errors import ConfigError

    if isinstance(source, (str, Path)) and not Path(source).exists():
        raise CliFailure(f"{origin} {source}: file not found", EXIT_CONFIG)
    try:
        return load_config(Path(source) if isinstance(source, str) else source)
    except ConfigError as exc:
        problems = "\n  ".join(getattr(exc, "problems", None) or [str(exc)])
        raise CliFailure(f"invalid pipeline config {source}:\n  {problems}", EXIT_CONFIG) from exc


def load_model_from_args(args: argparse.Namespace):
    from model_deploy.runtime.models import load_model

    what = f"local model {args.local}" if args.local else f"model {args.model_name} version {args.model_version}"
    logger.info("loading %s", what)
    try:
        if args.local:
            return load_model(local_path=args.local)
        return load_model(model_name=args.model_name, model_version=args.model_version)
    except Exception as exc:  # not found, MLflow unreachable, broken artifact: all "model" failures
        raise CliFailure(f"cannot load {what}: {exc}", EXIT_MODEL) from exc


def config_from_model(model: Any, model_name: str | None):
    path = getattr(model, "config_path", None)
    if not path:
        raise CliFailure(
            f"no pipeline config: model {model_name} carries no pv_mappings.yaml; pass -c pipeline.yaml",
            EXIT_CONFIG)
    logger.info("using the pipeline config stored with the model: %s", path)
    return load_pipeline_config(path, origin="pv_mappings.yaml from MLflow")


def build_pipeline(config: Any, model: Any, args: argparse.Namespace, metrics: Any):
    from model_deploy.runtime.errors import ConfigError
    from model_deploy.runtime.pipeline import Pipeline

    from model_deploy.runtime.interfaces import InterfaceError

    try:
        return Pipeline(config, model, publish=args.publish, metrics=metrics)
    except ConfigError as exc:
        problems = "\n  ".join(getattr(exc, "problems", None) or [str(exc)])
        raise CliFailure(f"invalid pipeline config:\n  {problems}", EXIT_CONFIG) from exc
    except InterfaceError as exc:  # e.g. the k2eg gateway or a p4p_server port is unavailable
        raise CliFailure(f"cannot start the control-system interfaces: {exc}", EXIT_RUNTIME) from exc


def run_once(pipeline: Any) -> int:
    from model_deploy.runtime.errors import PipelineError

    try:
        outputs = pipeline.step_once()
    except PipelineError as exc:
        raise CliFailure(f"--once failed at stage {exc.stage}: {exc}", EXIT_RUNTIME) from exc
    finally:
        pipeline.stop()
    if not pipeline.publish:
        logger.info("dry run (no --publish): nothing was written to the control system")
    sys.stdout.write(json.dumps(jsonable(outputs), sort_keys=True) + "\n")
    sys.stdout.flush()
    return EXIT_OK


def jsonable(values: dict[str, Any]) -> dict[str, Any]:
    """Outputs as JSON: numbers stay numbers, arrays become nested lists."""
    import numpy as np

    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, np.ndarray):
            out[key] = value.tolist()
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- logging
class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(debug: bool, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_model_manager", False):
            root.removeHandler(existing)
    handler._model_manager = True  # type: ignore[attr-defined]  # so a second main() replaces it
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:  # third-party chatter drowns the pipeline's own messages
        for noisy in ("mlflow", "urllib3", "alembic", "botocore", "git", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
