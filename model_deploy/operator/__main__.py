"""`model-deploy-operator` / `python -m model_deploy.operator`: run the kopf operator.

Equivalent to `kopf run -m model_deploy.operator.handlers --standalone --all-namespaces
--liveness=http://0.0.0.0:8081/healthz` (or `--namespace X` per MDO_WATCH_NAMESPACES entry).
Extra command-line arguments are passed on to `kopf run` (e.g. `--verbose`, `--debug`).
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from model_deploy.operator.settings import OperatorSettings

HANDLERS_MODULE = "model_deploy.operator.handlers"


def kopf_arguments(settings: OperatorSettings, extra: list[str] | None = None) -> list[str]:
    """The `kopf run` command line for these settings (pure, for tests and docs)."""
    args = [
        "run",
        "-m",
        HANDLERS_MODULE,
        "--standalone",  # one replica; no peering objects (and no CRDs for them) needed
        f"--liveness=http://0.0.0.0:{settings.liveness_port}/healthz",
    ]
    if settings.watch_namespaces:
        for namespace in settings.watch_namespaces:
            args += ["--namespace", namespace]
    else:
        args.append("--all-namespaces")
    return args + list(extra or [])


def main(argv: list[str] | None = None) -> int:
    try:
        settings = OperatorSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"MDO_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}" for error in exc.errors()
        )
        sys.stderr.write(f"model-deploy-operator: invalid settings: {problems}\n")
        return 2
    from kopf.cli import main as kopf_cli  # imported late: the settings check above is instant

    extra = list(sys.argv[1:] if argv is None else argv)
    try:
        kopf_cli.main(args=kopf_arguments(settings, extra), prog_name="model-deploy-operator", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
