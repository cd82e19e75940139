"""`model-manager deploy | status | terminate`: the terminal route to a deployment.

Two routes, like Deeploy's deploy/update routes and Opsml's CLI:
- `--via mlflow` (default) sets the registered-model tags the operator polls, exactly what a scientist
  does in the MLflow UI; the model's `champion` alias (or latest version) is deployed.
- `--via kubernetes` applies a ModelDeployment directly, which can pin a version or alias.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

DEPLOY_TAG = "deployment_type"
TERMINATE_TAG = "deployment_terminate"
STATUS_TAGS = (
    "deployment_status",
    "deployment_timestamp",
    "deployment_name",
    "deployment_namespace",
    "deployment_version",
    "deployment_message",
)
SETTLED_STATUSES = {"running", "failed", "terminated"}


class DeployCtlError(RuntimeError):
    """A user-facing failure: printed as one line, exit code 1."""


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    for name, help_text in (
        ("deploy", "deploy a registered model (sets deployment_type=prod, or applies a ModelDeployment)"),
        ("status", "show a model's deployment status"),
        ("terminate", "tear a deployment down (sets deployment_terminate=true, or deletes the CR)"),
    ):
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-n", "--model_name", "--model-name", dest="model_name", required=True)
        sub.add_argument("--via", choices=("mlflow", "kubernetes"), default="mlflow")
        sub.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
        sub.add_argument("--namespace", default=None, help="namespace of the ModelDeployment (kubernetes route)")
        sub.add_argument("-o", "--output", choices=("text", "json"), default="text")
        if name == "deploy":
            sub.add_argument("-v", "--model_version", "--model-version", dest="model_version")
            sub.add_argument("--alias", help="model alias to deploy, e.g. champion (kubernetes route)")
            sub.add_argument("-p", "--publish", action="store_true", help="let the runtime write PVs")
            sub.add_argument("--type", dest="deployment_type", default="prod", choices=("prod", "continuous"))
        if name in ("deploy", "terminate"):
            sub.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                             help="wait up to SECONDS for the deployment to settle")
        sub.set_defaults(handler=_HANDLERS[name])


def _mlflow_client(tracking_uri: str | None):
    # MLflow's client retries for minutes by default; a terminal command should answer within seconds.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri) if tracking_uri else MlflowClient()


def _registered_model_tags(client, model_name: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(model_name).tags)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower():
            raise DeployCtlError(
                f"registered model {model_name!r} does not exist in MLflow at {client.tracking_uri}; "
                "register it first (mlflow.register_model) or check --model_name"
            ) from None
        raise DeployCtlError(f"MLflow at {client.tracking_uri} failed: {exc}") from None
    except Exception as exc:  # connection errors come as requests/urllib3 exceptions
        raise DeployCtlError(f"cannot reach MLflow at {client.tracking_uri}: {exc}") from None


def _wait_for_status(read: Callable[[], dict[str, str]], seconds: float, wanted: set[str]) -> dict[str, str]:
    deadline = time.monotonic() + seconds
    tags = read()
    while tags.get("deployment_status") not in wanted and time.monotonic() < deadline:
        time.sleep(1.0)
        tags = read()
    return tags


def _print(args: argparse.Namespace, data: dict[str, Any]) -> None:
    if args.output == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        print(f"{key.ljust(width)}  {value}")


def _status_from_tags(tags: dict[str, str]) -> dict[str, str]:
    return {key: tags[key] for key in (DEPLOY_TAG, TERMINATE_TAG, *STATUS_TAGS) if key in tags}


def deploy(args: argparse.Namespace) -> int:
    if args.via == "kubernetes":
        return _kube_deploy(args)
    if args.model_version or args.alias:
        raise DeployCtlError(
            "the MLflow route deploys the model's 'champion' alias (or its latest version); to pin a "
            "version set the champion alias in MLflow, or use --via kubernetes with --model_version"
        )
    client = _mlflow_client(args.tracking_uri)
    tags = _registered_model_tags(client, args.model_name)
    client.set_registered_model_tag(args.model_name, DEPLOY_TAG, args.deployment_type)
    if tags.get(TERMINATE_TAG, "").strip().lower() in ("true", "yes", "1"):
        client.delete_registered_model_tag(args.model_name, TERMINATE_TAG)
    read = lambda: _registered_model_tags(client, args.model_name)  # noqa: E731
    tags = _wait_for_status(read, args.wait, SETTLED_STATUSES) if args.wait else read()
    _print(args, _status_from_tags(tags))
    if args.wait and tags.get("deployment_status") != "running":
        return 1
    return 0


def status(args: argparse.Namespace) -> int:
    if args.via == "kubernetes":
        return _kube_status(args)
    client = _mlflow_client(args.tracking_uri)
    tags = _registered_model_tags(client, args.model_name)
    _print(args, _status_from_tags(tags) or {"deployment_status": "not deployed"})
    return 0


def terminate(args: argparse.Namespace) -> int:
    if args.via == "kubernetes":
        return _kube_terminate(args)
    client = _mlflow_client(args.tracking_uri)
    _registered_model_tags(client, args.model_name)
    client.set_registered_model_tag(args.model_name, TERMINATE_TAG, "true")
    read = lambda: _registered_model_tags(client, args.model_name)  # noqa: E731
    tags = _wait_for_status(read, args.wait, {"terminated"}) if args.wait else read()
    _print(args, _status_from_tags(tags))
    return 0 if not args.wait or tags.get("deployment_status") == "terminated" else 1


# --- kubernetes route -------------------------------------------------------------------------------


CLI_FIELD_MANAGER = "model-manager-cli"


def _kube():
    from model_deploy.operator.kube import Kube, KubeError

    try:
        return Kube.from_environment()
    except (KubeError, Exception) as exc:  # a missing/invalid kubeconfig raises ConfigException
        raise DeployCtlError(f"cannot load a Kubernetes config (KUBECONFIG or in-cluster): {exc}") from None


def _cr_name(args: argparse.Namespace) -> str:
    from model_deploy.operator.mlflow_sync import deployment_name_for_model

    return deployment_name_for_model(args.model_name)


def _namespace(args: argparse.Namespace) -> str:
    return args.namespace or "default"


def _cr_summary(cr: dict[str, Any] | None) -> dict[str, str]:
    if cr is None:
        return {"phase": "not deployed"}
    status = cr.get("status") or {}
    ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})
    summary = {
        "name": cr["metadata"]["name"],
        "namespace": cr["metadata"]["namespace"],
        "phase": status.get("phase", "pending"),
        "version": status.get("resolvedVersion", ""),
        "ready": ready.get("status", "Unknown"),
        "message": status.get("message") or ready.get("message", ""),
    }
    return {key: value for key, value in summary.items() if value != ""}


def _kube_call(fn, *args):
    from model_deploy.operator.kube import KubeError

    try:
        return fn(*args)
    except KubeError as exc:
        raise DeployCtlError(str(exc)) from None


def _wait_for_phase(kube, namespace: str, name: str, seconds: float, wanted: set[str]) -> dict | None:
    deadline = time.monotonic() + seconds
    cr = _kube_call(kube.get_cr, namespace, name)
    while time.monotonic() < deadline:
        phase = ((cr or {}).get("status") or {}).get("phase") if cr else "terminated"
        if phase in wanted:
            break
        time.sleep(1.0)
        cr = _kube_call(kube.get_cr, namespace, name)
    return cr


def _kube_deploy(args: argparse.Namespace) -> int:
    from model_deploy.operator.crd import API_VERSION, KIND, SpecError, parse_spec

    mlflow_source: dict[str, Any] = {"name": args.model_name}
    if args.model_version:
        mlflow_source["version"] = str(args.model_version)
    else:
        mlflow_source["alias"] = args.alias or "champion"
    if args.tracking_uri:
        mlflow_source["trackingUri"] = args.tracking_uri
    spec = {"model": {"mlflow": mlflow_source}, "publish": bool(args.publish)}
    try:
        parse_spec(spec)  # the same checks the operator makes, before anything reaches the cluster
    except SpecError as exc:
        raise DeployCtlError(str(exc)) from None
    name, namespace = _cr_name(args), _namespace(args)
    cr = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    kube = _kube()
    _kube_call(kube.apply_cr, cr, CLI_FIELD_MANAGER)
    if args.wait:
        cr = _wait_for_phase(kube, namespace, name, args.wait, {"running", "failed"})
    else:
        cr = _kube_call(kube.get_cr, namespace, name)
    summary = _cr_summary(cr)
    _print(args, summary)
    return 1 if args.wait and summary.get("phase") != "running" else 0


def _kube_status(args: argparse.Namespace) -> int:
    kube = _kube()
    _print(args, _cr_summary(_kube_call(kube.get_cr, _namespace(args), _cr_name(args))))
    return 0


def _kube_terminate(args: argparse.Namespace) -> int:
    kube = _kube()
    name, namespace = _cr_name(args), _namespace(args)
    if not _kube_call(kube.delete_cr, namespace, name):
        raise DeployCtlError(f"no ModelDeployment {namespace}/{name} to terminate")
    if args.wait:
        deadline = time.monotonic() + args.wait
        while _kube_call(kube.get_cr, namespace, name) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
    _print(args, _cr_summary(_kube_call(kube.get_cr, namespace, name)))
    return 0


_HANDLERS = {"deploy": deploy, "status": status, "terminate": terminate}


def run(args: argparse.Namespace) -> int:
    try:
        return args.handler(args)
    except DeployCtlError as exc:
        print(f"model-manager {args.command}: {exc}", file=sys.stderr)
        return 1
