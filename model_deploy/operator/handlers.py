"""kopf handlers for ModelDeployment: `kopf run -m model_deploy.operator.handlers`.

The handlers are thin: they hand the CR to `reconcile()` (resolve the model version -> render -> apply
-> read the real Deployment -> compute and write the status), or to `refresh_status()` when only the
Deployment moved. Decisions live in render.py / status.py / mlflow_sync.py (pure); this module wires
I/O, retries and metrics.

No finalizers anywhere: owner references let the garbage collector delete the children with the CR, and
the MLflow poller writes `terminated` tags. That is also why the periodic safety net (alias re-resolution,
drift repair, missed events) is a background task started on startup and not a `@kopf.timer`: kopf puts a
finalizer on every object that has timers or daemons, and a finalizer makes deletion hang whenever the
operator is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf
import yaml

from model_deploy.operator.crd import (
    GROUP,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    MANAGED_BY_MLFLOW,
    PLURAL,
    VERSION,
    KIND,
    MlflowModelSource,
    ModelDeploymentSpec,
    SpecError,
    parse_spec,
)
from model_deploy.operator.kube import Kube, KubeError, KubeForbidden, KubeInvalid
from model_deploy.operator.metrics import MetricsServer, OperatorMetrics
from model_deploy.operator.mlflow_sync import (
    MlflowSync,
    MlflowUnavailable,
    ModelNotFound,
    configure_mlflow_client_env,
    make_client,
    resolve_model_version,
    utc_now,
)
from model_deploy.operator.render import RenderError, render_objects
from model_deploy.operator.settings import OperatorSettings
from model_deploy.runtime.config import load_config
from model_deploy.runtime.errors import ConfigError
from model_deploy.operator.status import (
    DEGRADED,
    PROGRESSING,
    REASON_INVALID_SPEC,
    REASON_MLFLOW_UNAVAILABLE,
    REASON_MODEL_NOT_FOUND,
    TRUE,
    compute_status,
    condition,
    phase_from_status,
)

log = logging.getLogger(__name__)

# Degraded reasons set here (status.py has the Deployment-derived ones).
REASON_CONFIG_NOT_FOUND = "ConfigMapNotFound"
REASON_INVALID_OBJECT = "InvalidObject"
REASON_FORBIDDEN = "Forbidden"
REASON_RENDER_FAILED = "RenderFailed"
REASON_INVALID_CONFIG = "InvalidConfig"
# Input problems found by reconcile(); a Deployment event re-computes the status without re-resolving
# inputs, so it carries these over instead of flapping back to Ready until the next resync.
CARRIED_REASONS = frozenset(
    {REASON_MODEL_NOT_FOUND, REASON_MLFLOW_UNAVAILABLE, REASON_CONFIG_NOT_FOUND, REASON_INVALID_OBJECT,
     REASON_FORBIDDEN, REASON_RENDER_FAILED}
)
HEARTBEAT_SECONDS = 2.0
HEARTBEAT_STALE_SECONDS = 30.0
DIFFBASE_KEY = "last-handled-configuration"


class TransientError(RuntimeError):
    """MLflow or the API server is unavailable; the status says so, try again later."""

    def __init__(self, message: str, reason: str = "KubernetesUnavailable"):
        super().__init__(message)
        self.reason = reason


# ------------------------------------------------------------------------------------------ context
@dataclass
class OperatorContext:
    """Everything the handlers share (kept in kopf's memo)."""

    settings: OperatorSettings
    kube: Kube
    metrics: OperatorMetrics
    mlflow_sync: MlflowSync | None = None
    clock: Callable[[], datetime] = utc_now
    metrics_server: MetricsServer | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)
    heartbeat: float = field(default_factory=time.monotonic)
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    _phases: dict[tuple[str, str], str] = field(default_factory=dict)
    _mlflow_clients: dict[str | None, Any] = field(default_factory=dict)
    _background: set[asyncio.Task] = field(default_factory=set)

    def lock_for(self, namespace: str, name: str) -> asyncio.Lock:
        # create/update handlers, Deployment events and the resync loop may reach one CR at once.
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    def forget(self, namespace: str, name: str) -> None:
        self._locks.pop((namespace, name), None)
        self._phases.pop((namespace, name), None)
        self.metrics.set_phase_counts(self._phases.values())

    def track_phase(self, namespace: str, name: str, phase: str) -> None:
        self._phases[(namespace, name)] = phase
        self.metrics.set_phase_counts(self._phases.values())

    def mlflow_client(self, tracking_uri: str | None) -> Any:
        uri = tracking_uri or self.settings.mlflow_tracking_uri
        if uri not in self._mlflow_clients:
            self._mlflow_clients[uri] = make_client(uri)
        return self._mlflow_clients[uri]

    def backoff(self, retry: int) -> float:
        return min(
            self.settings.mlflow_backoff_initial_seconds * 2**retry, self.settings.mlflow_backoff_max_seconds
        )

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking client call in a thread, bounded by the request timeout."""
        timeout = self.settings.request_timeout_seconds + 5
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)
        except asyncio.TimeoutError:
            raise TransientError(f"{getattr(fn, '__name__', 'call')} timed out after {timeout:.0f}s") from None

    def in_background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)  # keep a reference until done (asyncio only keeps weak ones)
        task.add_done_callback(self._background.discard)

    def health(self) -> tuple[bool, str]:
        age = time.monotonic() - self.heartbeat
        if age > HEARTBEAT_STALE_SECONDS:
            return False, f"event loop stalled: no heartbeat for {age:.0f}s"
        return True, "ok"


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, JSON-clean copy of a kopf Body (its views must not leak into threads or be mutated)."""
    return json.loads(json.dumps(dict(body), default=str))


def is_mlflow_managed(body: Mapping[str, Any]) -> bool:
    return ((body.get("metadata") or {}).get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY_MLFLOW


def carried_model_error(previous_status: dict[str, Any]) -> tuple[str, str] | None:
    degraded = condition(previous_status, DEGRADED)
    if degraded and degraded.get("status") == TRUE and degraded.get("reason") in CARRIED_REASONS:
        return degraded["reason"], degraded.get("message", "")
    progressing = condition(previous_status, PROGRESSING)
    if progressing and progressing.get("reason") == REASON_MLFLOW_UNAVAILABLE:
        return REASON_MLFLOW_UNAVAILABLE, progressing.get("message", "")
    return None


# -------------------------------------------------------------------------------------- status I/O
async def write_status(ctx: OperatorContext, body: dict[str, Any], status: dict[str, Any]) -> bool:
    """Apply the status if it differs from the CR's; push MLflow tags when the phase moved.

    None values in `status` mean 'remove': they are left out of the server-side apply, which drops the
    fields this field manager owned before."""
    metadata = body["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    previous = body.get("status") or {}
    clean = {key: value for key, value in status.items() if value is not None}
    removed = [key for key, value in status.items() if value is None and previous.get(key) is not None]
    ctx.track_phase(namespace, name, clean.get("phase", "pending"))
    if not removed and all(previous.get(key) == value for key, value in clean.items()):
        return False
    await ctx.call(ctx.kube.patch_cr_status, namespace, name, clean, ctx.settings.field_manager)
    if (
        ctx.mlflow_sync is not None
        and is_mlflow_managed(body)
        and phase_from_status(clean) != phase_from_status(previous)
    ):
        # Best effort, off the reconcile path: a failure is left to the next poll.
        ctx.in_background(ctx.mlflow_sync.push_tags_for_cr({**body, "status": clean}))
    return True


# ---------------------------------------------------------------------------------------- reconcile
async def _resolve_version(
    ctx: OperatorContext, source: MlflowModelSource
) -> tuple[str | None, tuple[str, str] | None]:
    """(resolved version, model_error)."""
    client = ctx.mlflow_client(source.tracking_uri)
    try:
        version = await asyncio.wait_for(
            asyncio.to_thread(resolve_model_version, client, source),
            ctx.settings.mlflow_request_timeout_seconds + 5,
        )
        return version, None
    except ModelNotFound as exc:
        return None, (REASON_MODEL_NOT_FOUND, f"{exc}; register that version/alias in MLflow or fix spec.model.mlflow")
    except (MlflowUnavailable, asyncio.TimeoutError) as exc:
        return None, (REASON_MLFLOW_UNAVAILABLE, f"{exc or 'MLflow did not answer in time'}; retrying")


async def _pipeline_config_text(
    ctx: OperatorContext, spec: ModelDeploymentSpec, namespace: str
) -> tuple[str | None, tuple[str, str] | None]:
    """Text of a referenced pipeline ConfigMap key (hashed into the checksum, so an edit rolls the pods)."""
    ref = spec.config.config_map_ref
    if ref is None:
        return None, None
    config_map = await ctx.call(ctx.kube.get_config_map, namespace, ref.name)
    data = (config_map or {}).get("data") or {}
    if ref.key not in data:
        problem = f"has no key {ref.key!r}" if config_map else "does not exist"
        return None, (
            REASON_CONFIG_NOT_FOUND,
            f"spec.config.configMapRef: ConfigMap {namespace}/{ref.name} {problem}; create it or fix the reference",
        )
    return data[ref.key], None


def pipeline_config_problem(spec: ModelDeploymentSpec, config_text: str | None) -> tuple[str, str] | None:
    """Check an inline or ConfigMap pipeline config with the runtime's own loader, so a config the runtime
    would refuse is reported on the CR instead of rolling pods into a crash loop. A config that comes
    with the model from MLflow is checked by the runtime when it starts."""
    if spec.config.inline is not None:
        field, source = "spec.config.inline", spec.config.inline
    elif config_text is not None:
        ref = spec.config.config_map_ref
        field = f"spec.config.configMapRef (ConfigMap {ref.name}, key {ref.key})"
        try:
            source = yaml.safe_load(config_text)
        except yaml.YAMLError as exc:
            return REASON_INVALID_CONFIG, f"{field}: not valid YAML: {exc}"
    else:
        return None
    if not isinstance(source, Mapping):
        return REASON_INVALID_CONFIG, f"{field}: expected a mapping of pipeline sections, got {type(source).__name__}"
    try:
        load_config(dict(source))
    except ConfigError as exc:
        return REASON_INVALID_CONFIG, f"{field}: " + "; ".join(exc.problems)
    return None


async def _apply_objects(ctx: OperatorContext, objects: list[dict[str, Any]]) -> tuple[str, str] | None:
    for obj in objects:
        try:
            await ctx.call(ctx.kube.apply, obj, ctx.settings.field_manager, True)
        except KubeInvalid as exc:
            return REASON_INVALID_OBJECT, f"{exc}; fix the ModelDeployment fields it names"
        except KubeForbidden as exc:
            return REASON_FORBIDDEN, str(exc)
        except KubeError as exc:  # unavailable, conflict: worth a retry
            raise TransientError(str(exc)) from None
    return None


async def reconcile(ctx: OperatorContext, body: dict[str, Any]) -> dict[str, Any] | None:
    """Bring one ModelDeployment's objects and status up to date; returns the computed status (None when
    the CR is gone).

    Never raises for a bad spec or a missing model (both end up in the status); raises TransientError
    when MLflow or the API server is unavailable (after recording that in the status when possible)."""
    metadata = body["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    async with ctx.lock_for(namespace, name):
        started = time.monotonic()
        # result: ok | invalid_spec | degraded | transient | error | gone; reason: the condition reason.
        result, reason = "error", None
        try:
            # Re-read under the lock: a Deployment event may have written a newer status since `body`
            # was delivered, and comparing against a stale one could skip a needed write.
            current = await ctx.call(ctx.kube.get_cr, namespace, name)
            if current is None or current["metadata"].get("uid") != metadata.get("uid"):
                result = "gone"
                return None
            status, reason = await _reconcile_locked(ctx, current)
            result = "ok" if reason is None else "invalid_spec" if reason == REASON_INVALID_SPEC else "degraded"
            return status
        except TransientError as exc:
            result, reason = "transient", exc.reason
            raise
        except Exception as exc:
            reason = type(exc).__name__
            raise
        finally:
            ctx.metrics.reconciles.labels(result=result).inc()
            if reason is not None:
                ctx.metrics.reconcile_errors.labels(reason=reason).inc()
            ctx.metrics.reconcile_duration.observe(time.monotonic() - started)


async def _reconcile_locked(ctx: OperatorContext, body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(status, the Degraded/InvalidSpec reason or None when all went well)."""
    metadata = body["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    generation = int(metadata.get("generation") or 1)
    previous = body.get("status") or {}

    def status_with(**values: Any) -> dict[str, Any]:
        return compute_status(generation=generation, previous_status=previous, now=ctx.clock(), **values)

    try:
        spec = parse_spec(body.get("spec") or {})
    except SpecError as exc:
        # The last valid objects keep running; report and wait for a spec change (no retry).
        deployment = await ctx.call(ctx.kube.get_deployment, namespace, name)
        status = status_with(spec=None, spec_error=str(exc), deployment=deployment, resolved_version=None)
        if await write_status(ctx, body, status):
            log.warning("ModelDeployment %s/%s has an invalid spec: %s", namespace, name, exc)
        return status, REASON_INVALID_SPEC

    resolved, model_error = (None, None)
    if spec.model.mlflow is not None:
        resolved, model_error = await _resolve_version(ctx, spec.model.mlflow)
    config_text = None
    if model_error is None:
        config_text, model_error = await _pipeline_config_text(ctx, spec, namespace)
    if model_error is None:
        model_error = pipeline_config_problem(spec, config_text)
    deployment_name = name
    if model_error is None:
        try:
            objects = render_objects(
                name=name, namespace=namespace, uid=metadata["uid"], generation=generation, spec=spec,
                settings=ctx.settings, resolved_version=resolved, config_text=config_text,
            )
        except RenderError as exc:
            model_error = (REASON_RENDER_FAILED, str(exc))
        else:
            deployment_name = next(
                (o["metadata"]["name"] for o in objects if o.get("kind") == "Deployment"), name
            )
            model_error = await _apply_objects(ctx, objects)

    deployment = await ctx.call(ctx.kube.get_deployment, namespace, deployment_name)
    status = status_with(
        spec=spec, spec_error=None, deployment=deployment, resolved_version=resolved, model_error=model_error
    )
    changed = await write_status(ctx, body, status)
    if model_error is None:
        return status, None
    reason, message = model_error
    if changed:
        log.warning("ModelDeployment %s/%s: %s: %s", namespace, name, reason, message)
    if reason == REASON_MLFLOW_UNAVAILABLE:
        raise TransientError(message, reason)
    return status, reason


async def refresh_status(
    ctx: OperatorContext, namespace: str, name: str, deployment: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Re-compute a CR's status from its Deployment without re-resolving inputs (Deployment events)."""
    async with ctx.lock_for(namespace, name):
        cr = await ctx.call(ctx.kube.get_cr, namespace, name)
        if cr is None:
            return None
        previous = cr.get("status") or {}
        generation = int(cr["metadata"].get("generation") or 1)
        if previous.get("observedGeneration") != generation:
            return None  # a reconcile of the newer spec is pending; it writes the status
        try:
            spec = parse_spec(cr.get("spec") or {})
        except SpecError:
            return None  # reported by reconcile(); nothing about the Deployment changes that
        if deployment is not None:
            # The event is only a trigger: its body can be older than the Deployment a reconcile read
            # meanwhile, and a stale "not ready yet" would flip a running CR back to updating.
            deployment = await ctx.call(
                ctx.kube.get_deployment, namespace, (deployment.get("metadata") or {}).get("name") or name
            )
        if deployment is not None:
            status = compute_status(
                generation=generation, spec=spec, spec_error=None, deployment=deployment,
                resolved_version=previous.get("resolvedVersion"), previous_status=previous, now=ctx.clock(),
                model_error=carried_model_error(previous),
            )
            await write_status(ctx, cr, status)
            return status
    # The Deployment was deleted under us (not by the garbage collector: the CR still exists): put it back.
    return await reconcile(ctx, cr)


def owner_name(deployment: Mapping[str, Any]) -> str | None:
    """The ModelDeployment that controls a Deployment (its controller owner reference; the label alone
    is not trusted: anyone can copy a label onto an unrelated Deployment)."""
    metadata = deployment.get("metadata") or {}
    for ref in metadata.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/") and ref.get("controller"):
            return ref.get("name")
    return None


# ------------------------------------------------------------------------------- background loops
async def resync_loop(ctx: OperatorContext) -> None:
    """Every status_resync_seconds: reconcile every CR (re-resolves aliases: an alias that moved rolls the
    Deployment; repairs drift; catches anything a watch missed)."""
    interval = ctx.settings.status_resync_seconds
    while not ctx.stop.is_set():
        try:
            await asyncio.wait_for(ctx.stop.wait(), interval)
            return
        except asyncio.TimeoutError:
            pass
        try:
            await resync_once(ctx)
        except Exception as exc:  # noqa: BLE001 - the safety net must keep running
            log.warning("status resync failed: %s", exc)


async def resync_once(ctx: OperatorContext) -> int:
    namespaces = ctx.settings.watch_namespaces or [None]
    crs: list[dict[str, Any]] = []
    for namespace in namespaces:
        crs.extend(await ctx.call(ctx.kube.list_crs, namespace, None))
    for cr in crs:
        try:
            await reconcile(ctx, cr)
        except (TransientError, KubeError) as exc:
            log.debug("resync of %s/%s deferred: %s", cr["metadata"]["namespace"], cr["metadata"]["name"], exc)
    return len(crs)


async def heartbeat_loop(ctx: OperatorContext) -> None:
    while not ctx.stop.is_set():
        ctx.heartbeat = time.monotonic()
        try:
            await asyncio.wait_for(ctx.stop.wait(), HEARTBEAT_SECONDS)
        except asyncio.TimeoutError:
            pass


def configure_kopf(settings: kopf.OperatorSettings, operator_settings: OperatorSettings) -> None:
    settings.watching.server_timeout = operator_settings.watch_server_timeout_seconds
    settings.watching.client_timeout = operator_settings.watch_client_timeout_seconds
    settings.networking.request_timeout = operator_settings.request_timeout_seconds
    # kopf's bookkeeping goes to annotations under our group, not into our status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key=DIFFBASE_KEY)
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"  # never added: no handler needs one
    settings.posting.level = logging.WARNING  # Kubernetes Events only for warnings and errors
    # Namespaced RBAC (Helm rbac.clusterWide=false) cannot list CRDs or namespaces cluster-wide.
    settings.scanning.disabled = operator_settings.kopf_scanning_disabled


async def start_operator(operator_settings: OperatorSettings, kube: Kube | None = None) -> OperatorContext:
    """Build the shared context and start the metrics server and the background loops."""
    configure_mlflow_client_env(operator_settings.mlflow_request_timeout_seconds)
    watched = operator_settings.watch_namespaces
    if operator_settings.mlflow_poll_enabled and watched and operator_settings.namespace not in watched:
        log.warning("MDO_NAMESPACE=%s is not in MDO_WATCH_NAMESPACES=%s: MLflow-managed ModelDeployments would "
                    "be created but never reconciled; add it to the watched namespaces",
                    operator_settings.namespace, watched)
    kube = kube or Kube.from_environment(request_timeout=operator_settings.request_timeout_seconds)
    metrics = OperatorMetrics()
    ctx = OperatorContext(settings=operator_settings, kube=kube, metrics=metrics)
    ctx.mlflow_sync = MlflowSync(operator_settings, kube, metrics=metrics)
    ctx.metrics_server = MetricsServer(metrics, operator_settings.metrics_port, health=ctx.health).start()
    ctx.tasks.append(asyncio.create_task(heartbeat_loop(ctx), name="mdo-heartbeat"))
    ctx.tasks.append(asyncio.create_task(resync_loop(ctx), name="mdo-resync"))
    if operator_settings.mlflow_poll_enabled:
        ctx.tasks.append(asyncio.create_task(ctx.mlflow_sync.run_forever(ctx.stop), name="mdo-mlflow-poller"))
    return ctx


async def stop_operator(ctx: OperatorContext) -> None:
    ctx.stop.set()
    for task in ctx.tasks:
        try:
            await asyncio.wait_for(task, 10)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            task.cancel()
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            log.warning("background task %s ended with %s", task.get_name(), exc)
    if ctx.metrics_server is not None:
        ctx.metrics_server.stop()
    if ctx.mlflow_sync is not None:
        ctx.mlflow_sync.close()


# -------------------------------------------------------------------------------------- kopf wiring
@kopf.on.startup()
async def on_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator_settings = OperatorSettings()
    configure_kopf(settings, operator_settings)
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        # kopf logs every successful event handler at INFO: one line per Deployment status change.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    memo.ctx = await start_operator(operator_settings)
    log.info("model-deploy-operator started: MLflow %s, namespace for MLflow deployments %s",
             operator_settings.mlflow_tracking_uri or "(unset)", operator_settings.namespace)


@kopf.on.cleanup()
async def on_cleanup(memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext | None = getattr(memo, "ctx", None)
    if ctx is not None:
        await stop_operator(ctx)


@kopf.on.probe(id="mlflow")
def mlflow_probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    ctx: OperatorContext = memo.ctx
    sync = ctx.mlflow_sync
    return {
        "up": ctx.metrics.value("mdo_mlflow_up") == 1,
        "consecutive_failures": sync.consecutive_failures if sync else 0,
    }


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def on_model_deployment(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    ctx: OperatorContext = memo.ctx
    try:
        await reconcile(ctx, plain(body))
    except (TransientError, KubeError) as exc:
        # Retried by kopf with our backoff; one log line, no traceback (the status already tells).
        raise kopf.TemporaryError(str(exc), delay=ctx.backoff(retry)) from None


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_model_deployment_event(event: Mapping[str, Any], namespace: str, name: str, memo: kopf.Memo,
                              **_: Any) -> None:
    if event.get("type") == "DELETED":
        memo.ctx.forget(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_DEPLOYMENT: kopf.PRESENT})
async def on_deployment_event(event: Mapping[str, Any], body: kopf.Body, namespace: str, memo: kopf.Memo,
                              **_: Any) -> None:
    owner = owner_name(body)
    if not owner:
        return
    deployment = None if event.get("type") == "DELETED" else plain(body)
    try:
        await refresh_status(memo.ctx, namespace, owner, deployment)
    except (TransientError, KubeError) as exc:
        log.debug("status refresh of %s/%s deferred to the resync: %s", namespace, owner, exc)
