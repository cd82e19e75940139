"""MLflow registry <-> ModelDeployment custom resources.

Registered models opt in with the tag `deployment_type` (prod, or the legacy continuous). The poller turns
the registry into MLflow-managed ModelDeployment CRs (created, updated, deleted in settings.namespace) and
writes each deployment's state back as `deployment_*` tags on the registered model.

The first half of this module is pure decisions (tags -> desired CRs -> actions, CR status -> tags); the
second half, MlflowSync, does the I/O. Nothing that matters lives only in memory: every poll derives its
plan from the MLflow tags and the CRs, so a restarted operator (or a recovered MLflow) resumes where it
left off. The one in-memory helper, KnownTags, only saves requests: what the latest poll read, plus what
the operator wrote since, so a status change costs one SET per changed tag and no GET.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model_deploy.operator.crd import (
    ANNOTATION_REGISTERED_MODEL,
    API_VERSION,
    KIND,
    LABEL_MANAGED_BY,
    MANAGED_BY_MLFLOW,
    MlflowModelSource,
)
from model_deploy.operator.kube import Kube, KubeError
from model_deploy.operator.metrics import OperatorMetrics
from model_deploy.operator.settings import OperatorSettings
from model_deploy.operator.status import phase_from_status

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- tags
TAG_TYPE = "deployment_type"
TAG_TERMINATE = "deployment_terminate"
TAG_STATUS = "deployment_status"
TAG_TIMESTAMP = "deployment_timestamp"
TAG_NAME = "deployment_name"
TAG_NAMESPACE = "deployment_namespace"
TAG_VERSION = "deployment_version"
TAG_MESSAGE = "deployment_message"
PROMPT_TAG = "mlflow.prompt.is_prompt"  # MLflow stores prompts as registered models carrying this tag

VALID_DEPLOYMENT_TYPES = ("prod", "continuous")  # continuous: legacy name, deployed like prod
TRUTHY = frozenset({"true", "yes", "1"})
CHAMPION_ALIAS = "champion"
MLFLOW_TAG_VALUE_LIMIT = 5000  # MLflow refuses longer tag values
MAX_NAME_LENGTH = 63  # a DNS-1123 label: the CR name is also a label value on every child object
SEARCH_PAGE_SIZE = 100
# Threads for MLflow calls, apart from asyncio's default pool that the reconcile path's Kubernetes calls use:
# a slow or unreachable MLflow (each call may hang for the request timeout) can never starve reconciles.
MLFLOW_THREADS = 4

PHASE_PENDING = "pending"
PHASE_FAILED = "failed"
PHASE_TERMINATED = "terminated"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------------------- pure: names
def deployment_name_for_model(model_name: str) -> str:
    """DNS-1123 label (and DNS-1035: starts with a letter) for a registered model's CR.

    Lowercased, runs of other characters -> '-', trimmed. Whenever that changed the name, or it had to
    be cut to 63 characters, a short hash of the original name is appended, so 'My Model' and 'my-model'
    (or two long names sharing a prefix) never collide.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")
    if not slug:
        slug = "model"
    if not slug[0].isalpha():
        slug = f"m-{slug}"  # Service names (DNS-1035) must start with a letter
    if slug == model_name and len(slug) <= MAX_NAME_LENGTH:
        return slug
    suffix = hashlib.sha256(model_name.encode()).hexdigest()[:8]
    stem = slug[: MAX_NAME_LENGTH - len(suffix) - 1].rstrip("-")
    return f"{stem}-{suffix}"


# ----------------------------------------------------------------------------------- pure: desired state
class RegisteredModelInfo(BaseModel):
    """What the poller needs from one MLflow registered model."""

    model_config = ConfigDict(frozen=True)

    name: str
    tags: dict[str, str] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)  # alias -> version
    latest_versions: list[str] = Field(default_factory=list)  # latest version per (legacy) stage

    @property
    def latest_version(self) -> str | None:
        return max(self.latest_versions, key=int) if self.latest_versions else None

    @property
    def is_prompt(self) -> bool:
        return PROMPT_TAG in self.tags

    @classmethod
    def from_mlflow(cls, model: Any) -> "RegisteredModelInfo":
        return cls(
            name=model.name,
            tags=dict(model.tags or {}),
            aliases={alias: str(version) for alias, version in (model.aliases or {}).items()},
            latest_versions=[str(v.version) for v in (model.latest_versions or [])],
        )


Intent = Literal["deploy", "terminate", "invalid"]


class DesiredDeployment(BaseModel):
    """What one opted-in registered model asks for."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    cr_name: str
    intent: Intent
    version: str | None = None
    message: str = ""  # why the intent is `invalid`


def is_truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUTHY


def deployment_type(model: RegisteredModelInfo) -> str | None:
    """The normalised deployment_type tag; None when absent or blank (the model has not opted in)."""
    value = (model.tags.get(TAG_TYPE) or "").strip().lower()
    return value or None


def desired_for_model(model: RegisteredModelInfo) -> DesiredDeployment | None:
    kind = deployment_type(model)
    if kind is None:
        return None
    cr_name = deployment_name_for_model(model.name)
    base = {"model_name": model.name, "cr_name": cr_name}
    if kind not in VALID_DEPLOYMENT_TYPES:
        raw = model.tags[TAG_TYPE].strip()
        return DesiredDeployment(
            **base,
            intent="invalid",
            message=f"deployment_type {raw!r} is not one of {', '.join(VALID_DEPLOYMENT_TYPES)}",
        )
    if is_truthy(model.tags.get(TAG_TERMINATE)):
        return DesiredDeployment(**base, intent="terminate")
    version = model.aliases.get(CHAMPION_ALIAS) or model.latest_version
    if version is None:
        return DesiredDeployment(
            **base,
            intent="invalid",
            message=f"registered model {model.name!r} has no versions; register a version "
            f"(or set the {CHAMPION_ALIAS!r} alias) to deploy it",
        )
    return DesiredDeployment(**base, intent="deploy", version=version)


def desired_state(models: Iterable[RegisteredModelInfo]) -> dict[str, DesiredDeployment]:
    """Model name -> desired deployment, for every model with a non-blank deployment_type tag."""
    desired = {}
    for model in models:
        wanted = desired_for_model(model)
        if wanted is not None:
            desired[model.name] = wanted
    return desired


# ------------------------------------------------------------------------------------------ pure: plan
class ExistingCR(BaseModel):
    """A ModelDeployment found in the operator's namespace."""

    model_config = ConfigDict(frozen=True)

    name: str
    managed: bool  # labelled managed-by=mlflow: ours to create, update and delete
    model_name: str | None = None
    version: str | None = None
    status: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> "ExistingCR":
        metadata = obj.get("metadata") or {}
        mlflow_source = ((obj.get("spec") or {}).get("model") or {}).get("mlflow") or {}
        return cls(
            name=metadata["name"],
            managed=(metadata.get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY_MLFLOW,
            model_name=(metadata.get("annotations") or {}).get(ANNOTATION_REGISTERED_MODEL),
            version=mlflow_source.get("version"),
            status=obj.get("status") or {},
        )


class Action(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["create", "update", "delete", "noop"]
    cr_name: str
    model_name: str | None = None
    version: str | None = None
    reason: str = ""
    error: str | None = None  # a noop that is a failure to report (e.g. a name conflict)


def plan(desired: dict[str, DesiredDeployment], existing: dict[str, ExistingCR]) -> list[Action]:
    """Actions that make the MLflow-managed CRs match `desired` (sorted by CR name)."""
    actions: list[Action] = []
    wanted_names = set()
    for want in desired.values():
        wanted_names.add(want.cr_name)
        have = existing.get(want.cr_name)
        common = {"cr_name": want.cr_name, "model_name": want.model_name}
        if have is not None and not have.managed:
            actions.append(
                Action(
                    kind="noop",
                    **common,
                    reason="name taken",
                    error=f"a ModelDeployment named {want.cr_name!r} that MLflow does not manage already "
                    f"exists in this namespace; delete or rename it, or label it {LABEL_MANAGED_BY}="
                    f"{MANAGED_BY_MLFLOW} to hand it over",
                )
            )
        elif want.intent == "invalid":
            # Unknown intent: create nothing, but do not tear down a running deployment over a tag typo.
            actions.append(Action(kind="noop", **common, reason=want.message, error=want.message))
        elif want.intent == "terminate":
            if have is not None:
                actions.append(Action(kind="delete", **common, reason="deployment_terminate is set"))
            else:
                actions.append(Action(kind="noop", **common, reason="terminated"))
        elif have is None:
            actions.append(Action(kind="create", **common, version=want.version, reason="new deployment"))
        elif have.version != want.version or have.model_name != want.model_name:
            actions.append(
                Action(
                    kind="update",
                    **common,
                    version=want.version,
                    reason=f"version {have.version} -> {want.version}",
                )
            )
        else:
            actions.append(Action(kind="noop", **common, version=want.version, reason="up to date"))
    for have in existing.values():
        if have.managed and have.name not in wanted_names:
            actions.append(
                Action(
                    kind="delete",
                    cr_name=have.name,
                    model_name=have.model_name,
                    reason="the registered model is gone or lost its deployment_type tag",
                )
            )
    return sorted(actions, key=lambda action: action.cr_name)


def cr_manifest(want: DesiredDeployment, namespace: str) -> dict[str, Any]:
    """The fields the poller owns on an MLflow-managed CR (applied server-side; users may add others)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": want.cr_name,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY_MLFLOW},
            "annotations": {ANNOTATION_REGISTERED_MODEL: want.model_name},
        },
        "spec": {"model": {"mlflow": {"name": want.model_name, "version": want.version}}},
    }


# ------------------------------------------------------------------------------------------ pure: tags
def format_timestamp(now: datetime) -> str:
    """UTC ISO-8601, seconds precision, 'Z' suffix: 2025-01-31T12:00:00Z."""
    return now.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def truncate_tag_value(value: str, limit: int = MLFLOW_TAG_VALUE_LIMIT) -> str:
    if len(value) <= limit:
        return value
    marker = " ...[truncated]"
    return value[: limit - len(marker)] + marker


def tags_for(
    phase: str,
    cr_status: dict[str, Any] | None,
    now: datetime,
    *,
    name: str | None = None,
    namespace: str | None = None,
    version: str | None = None,
    message: str | None = None,
) -> dict[str, str]:
    """The deployment_* tags for one deployment. Name/version/message default to the CR status's
    deploymentName / resolvedVersion / message; keys with no value are left out (not blanked)."""
    status = cr_status or {}
    values = {
        TAG_STATUS: phase,
        TAG_TIMESTAMP: format_timestamp(now),
        TAG_NAME: status.get("deploymentName") or name,
        TAG_NAMESPACE: namespace,
        TAG_VERSION: status.get("resolvedVersion") or version,
        TAG_MESSAGE: truncate_tag_value(message if message is not None else status.get("message") or ""),
    }
    return {key: str(value) for key, value in values.items() if value is not None}


def tag_changes(current_tags: dict[str, str], wanted_tags: dict[str, str]) -> dict[str, str]:
    """The tags to write. The timestamp means 'when the status (or version) last changed', so it is only
    written along with such a change; otherwise every poll would rewrite it."""
    changes = {
        key: value
        for key, value in wanted_tags.items()
        if key != TAG_TIMESTAMP and current_tags.get(key) != value
    }
    status_moved = TAG_STATUS in changes or TAG_VERSION in changes or TAG_TIMESTAMP not in current_tags
    if status_moved and TAG_TIMESTAMP in wanted_tags:
        changes[TAG_TIMESTAMP] = wanted_tags[TAG_TIMESTAMP]
    return changes


def wanted_tags(
    *,
    model: RegisteredModelInfo,
    want: DesiredDeployment | None,
    action: Action | None,
    cr: ExistingCR | None,
    namespace: str,
    now: datetime,
) -> dict[str, str]:
    """Tags one model should carry after this poll's actions ({} = leave its tags alone)."""
    cr_name = want.cr_name if want else deployment_name_for_model(model.name)
    where = {"name": cr_name, "namespace": namespace}
    if action is not None and action.error:
        return tags_for(PHASE_FAILED, None, now, **where, message=action.error)
    if want is None or want.intent == "terminate":
        if cr is not None:  # deletion pending or failed: report again next poll
            return {}
        current = model.tags.get(TAG_STATUS)
        if want is None and current in (None, PHASE_TERMINATED):
            return {}  # never deployed, or already reported
        why = "deployment_terminate is set" if want else "the deployment_type tag was removed"
        return tags_for(PHASE_TERMINATED, None, now, **where, message=f"{why}; the deployment was deleted")
    if want.intent == "invalid":  # (handled via action.error; kept for callers without a plan)
        return tags_for(PHASE_FAILED, None, now, **where, message=want.message)
    if cr is None or not cr.status:
        return tags_for(
            PHASE_PENDING, None, now, **where, version=want.version,
            message="ModelDeployment created; waiting for the operator",
        )
    return tags_for(phase_from_status(cr.status), cr.status, now, **where)


# ------------------------------------------------------------------------------------ pure: known tags
class KnownTags:
    """What the operator knows of each registered model's tags in MLflow, so that writing a status change
    needs no GET first: the latest read of the model (a poll's search, or a GET), overlaid with the
    operator's own tag writes that finished after that read was sent.

    Every write bumps a counter; a read is recorded with the counter value from just before it was sent
    (`mark()`). A write that finished before that mark is already in the read; a later one may not be, and
    its value is the newer one either way. A write that failed (or timed out: it may still land) makes its
    tag unknown, i.e. absent here, so the next writer sends it again.

    Only an optimisation, never the truth: each poll reads every managed model afresh, so a tag changed
    behind the operator's back is put right within one poll interval, as before."""

    def __init__(self) -> None:
        self._counter = 0
        self._reads: dict[str, tuple[int, RegisteredModelInfo]] = {}
        self._writes: dict[str, dict[str, tuple[int, str | None]]] = {}

    def mark(self) -> int:
        return self._counter

    def read(self, model: RegisteredModelInfo, marked: int) -> None:
        """`model` as read by a request sent after `mark()` returned `marked`."""
        previous = self._reads.get(model.name)
        if previous is not None and previous[0] > marked:
            return  # a newer read is already known
        self._reads[model.name] = (marked, model)
        writes = self._writes.get(model.name)
        if writes:
            for key in [key for key, (counter, _) in writes.items() if counter <= marked]:
                del writes[key]

    def wrote(self, model_name: str, key: str, value: str | None) -> None:
        """A finished tag write; value None when it failed (MLflow may or may not hold the new value)."""
        self._counter += 1
        self._writes.setdefault(model_name, {})[key] = (self._counter, value)

    def model(self, name: str) -> RegisteredModelInfo | None:
        """The model with the tags MLflow holds as far as the operator knows (None: never read)."""
        found = self._reads.get(name)
        if found is None:
            return None
        marked, model = found
        tags = dict(model.tags)
        for key, (counter, value) in (self._writes.get(name) or {}).items():
            if counter > marked:
                if value is None:
                    tags.pop(key, None)
                else:
                    tags[key] = value
        return model.model_copy(update={"tags": tags})

    def retain(self, names: Iterable[str]) -> None:
        """Forget every model not in `names` (gone from MLflow, or no longer the operator's business)."""
        keep = set(names)
        for table in (self._reads, self._writes):
            for name in [name for name in table if name not in keep]:
                del table[name]


# --------------------------------------------------------------------------------------------- errors
class MlflowUnavailable(RuntimeError):
    """MLflow could not be reached or answered with a server error."""


class ModelNotFound(LookupError):
    """The registered model, version or alias does not exist."""


_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


def classify_mlflow_error(exc: BaseException, what: str) -> Exception:
    """ModelNotFound for a missing model/version/alias, MlflowUnavailable for everything else."""
    code = getattr(exc, "error_code", None)
    message = str(getattr(exc, "message", None) or exc).strip()
    if code in _NOT_FOUND_CODES:
        return ModelNotFound(f"{what}: {message}")
    return MlflowUnavailable(f"{what}: MLflow unavailable ({short_cause(exc, message)})")


def short_cause(exc: BaseException, message: str) -> str:
    """The gist of a client error; urllib3's messages repeat the URL and run to hundreds of characters."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "timeout" in message.lower():
        return "no answer within the timeout"
    for marker, gist in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "host name not found"),
        ("Temporary failure in name resolution", "host name not found"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "connection closed by the server"),
    ):
        if marker in message:
            return gist
    return message[:300]


def configure_mlflow_client_env(timeout_seconds: int = 10) -> None:
    """Make MLflow client calls fail fast: the poller has its own backoff, and MLflow's default retries
    (7 with exponential backoff, 120 s timeout) would park a worker thread for minutes per call.
    Only defaults: an explicit environment wins."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_seconds))
    # The client phones home (config.mlflow-telemetry.io) unless told not to; an operator must not.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def make_client(tracking_uri: str | None) -> Any:
    from mlflow import MlflowClient  # heavy import, only where MLflow is actually used

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def resolve_model_version(client: Any, source: MlflowModelSource) -> str:
    """Concrete version for a CR's model source (blocking): the version if it exists, else the alias's
    version (default alias: champion). Raises ModelNotFound or MlflowUnavailable."""
    try:
        if source.version:
            return str(client.get_model_version(source.name, source.version).version)
        alias = source.alias or CHAMPION_ALIAS
        return str(client.get_model_version_by_alias(source.name, alias).version)
    except Exception as exc:  # noqa: BLE001 - classified below
        selector = f"version {source.version}" if source.version else f"alias {source.alias or CHAMPION_ALIAS!r}"
        raise classify_mlflow_error(exc, f"model {source.name!r} {selector}") from None


# ------------------------------------------------------------------------------------------------ I/O
class PollOutcome(BaseModel):
    ok: bool
    next_delay: float
    actions: list[Action] = Field(default_factory=list)
    tag_writes: int = 0
    error: str | None = None


class MlflowSync:
    """Polls MLflow, reconciles the MLflow-managed CRs, writes the tags back.

    `poll_once()` never raises: failures are counted, logged once per outage and answered with an
    exponential backoff (the returned next_delay); `run_forever()` loops on it.
    """

    def __init__(
        self,
        settings: OperatorSettings,
        kube: Kube,
        *,
        metrics: OperatorMetrics | None = None,
        clock: Clock = utc_now,
        client: Any = None,
        call_timeout: float | None = None,
    ):
        self.settings = settings
        self.kube = kube
        self.metrics = metrics or OperatorMetrics()
        self.clock = clock
        self._client = client  # built on first use: a client without a URI creates ./mlflow.db
        # A little above the client's own request timeout, so the client reports its (clearer) error first.
        self.call_timeout = call_timeout or settings.mlflow_request_timeout_seconds + 5.0
        self.field_manager = f"{settings.field_manager}-mlflow"
        self.consecutive_failures = 0
        self.last_success: float | None = None
        self._outage: str | None = None  # "mlflow" / "kubernetes" while one is ongoing: log once
        # The poller and the status path both write a model's tags; each reads the CR and writes under
        # the model's lock, so a slower writer holding an older view never overwrites a newer status.
        self._tag_locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        # The tags as last read plus our own writes since: diffs without a GET before every write.
        self.known = KnownTags()
        # Status-path pushes back off on their own while MLflow fails (the poller catches up afterwards).
        self._push_failures = 0
        self._push_paused_until = 0.0
        self._mlflow_threads = ThreadPoolExecutor(MLFLOW_THREADS, thread_name_prefix="mdo-mlflow")

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.settings.mlflow_tracking_uri)
        return self._client

    # -- thread offloading --------------------------------------------------------------------------
    async def _mlflow(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            call = loop.run_in_executor(self._mlflow_threads, functools.partial(fn, *args, **kwargs))
            return await asyncio.wait_for(call, self.call_timeout)
        except Exception as exc:  # noqa: BLE001 - classified
            raise classify_mlflow_error(exc, what) from None

    async def _kube(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), self.settings.request_timeout_seconds + 5.0)

    # -- MLflow reads/writes -----------------------------------------------------------------------
    async def search_models(self, filter_string: str) -> list[RegisteredModelInfo]:
        models: list[RegisteredModelInfo] = []
        page_token = None
        while True:
            page = await self._mlflow(
                "search registered models",
                self.client.search_registered_models,
                filter_string=filter_string,
                max_results=SEARCH_PAGE_SIZE,
                page_token=page_token,
            )
            models.extend(RegisteredModelInfo.from_mlflow(model) for model in page)
            page_token = page.token
            if not page_token:
                return models

    def _set_tag_blocking(self, model_name: str, key: str, value: str) -> None:
        # MlflowClient.set_registered_model_tag first GETs the model to refuse prompts (_raise_if_prompt):
        # a hidden second request per tag. The registry client it delegates to sends just the SET. Tags
        # only go to models read by this operator: the searches leave prompts out, push_tags_for_cr
        # checks the model it fetched.
        registry = getattr(self.client, "_get_registry_client", None)
        if registry is None:  # another MLflow version or a stand-in client: the public call
            self.client.set_registered_model_tag(model_name, key, value)
        else:
            registry().set_registered_model_tag(model_name, key, value)

    async def _set_tag(self, model_name: str, key: str, value: str) -> None:
        try:
            await self._mlflow(f"set tag {key} on {model_name!r}", self._set_tag_blocking, model_name, key, value)
        except BaseException:
            self.known.wrote(model_name, key, None)  # it may still land: unknown, sent again next time
            raise
        self.known.wrote(model_name, key, value)
        self.metrics.tag_writes.inc()

    async def write_tags(self, model_name: str, changes: dict[str, str]) -> int:
        """One request per tag (MLflow has no batch endpoint for registered-model tags). The status goes
        last, only once every other tag is written, so a reader never sees a new status with a stale
        message/version; those others are independent and go at once. Callers hold the model's lock, so
        no other writer of this model's tags runs meanwhile."""
        others = [(key, value) for key, value in changes.items() if key != TAG_STATUS]
        results = await asyncio.gather(*(self._set_tag(model_name, key, value) for key, value in others),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if TAG_STATUS in changes:
            await self._set_tag(model_name, TAG_STATUS, changes[TAG_STATUS])
        return len(changes)

    # -- one poll ----------------------------------------------------------------------------------
    async def poll_once(self) -> PollOutcome:
        started = time.monotonic()
        try:
            actions, writes = await self._poll()
        except (MlflowUnavailable, ModelNotFound) as exc:
            return self._failed("mlflow", str(exc))
        except (KubeError, asyncio.TimeoutError, TimeoutError) as exc:
            return self._failed("kubernetes", str(exc) or "Kubernetes API call timed out")
        except Exception as exc:  # noqa: BLE001 - the poller must never die; the traceback is logged
            log.exception("MLflow poll failed unexpectedly")
            return self._failed("unexpected", f"{type(exc).__name__}: {exc}")
        finally:
            self.metrics.mlflow_poll_duration.observe(time.monotonic() - started)
        self._recovered()
        return PollOutcome(
            ok=True, next_delay=self.settings.mlflow_poll_interval_seconds, actions=actions, tag_writes=writes
        )

    async def _poll(self) -> tuple[list[Action], int]:
        namespace = self.settings.namespace
        # LIKE '%' matches any value, so typos (prdo) and case/whitespace variants come back too; the
        # second query finds models that lost the tag but still show a live deployment_status.
        marked = self.known.mark()
        opted_in = await self.search_models(f"tags.{TAG_TYPE} LIKE '%'")
        reported = await self.search_models(f"tags.{TAG_STATUS} != '{PHASE_TERMINATED}'")
        self.metrics.mlflow_up.set(1)
        models = {model.name: model for model in reported}
        models.update({model.name: model for model in opted_in})
        for model in models.values():
            self.known.read(model, marked)
        self.known.retain(models)
        desired = desired_state(opted_in)

        existing = {
            cr.name: cr
            for cr in (ExistingCR.from_object(obj) for obj in await self._kube(self.kube.list_crs, namespace, None))
        }
        actions = plan(desired, existing)
        crs_after = dict(existing)
        for action in actions:
            if action.kind in ("create", "update"):
                want = desired[action.model_name]  # type: ignore[index]
                applied = await self._kube(self.kube.apply_cr, cr_manifest(want, namespace), self.field_manager)
                crs_after[action.cr_name] = ExistingCR.from_object(applied)
                log.info("%s ModelDeployment %s/%s for model %r version %s (%s)", action.kind,
                         namespace, action.cr_name, action.model_name, action.version, action.reason)
            elif action.kind == "delete":
                await self._kube(self.kube.delete_cr, namespace, action.cr_name)
                crs_after.pop(action.cr_name, None)
                log.info("deleted ModelDeployment %s/%s (%s)", namespace, action.cr_name, action.reason)

        actions_by_cr = {action.cr_name: action for action in actions}
        writes = 0
        for model in models.values():
            want = desired.get(model.name)
            cr_name = want.cr_name if want else deployment_name_for_model(model.name)
            cr = crs_after.get(cr_name)
            if cr is not None and not cr.managed:
                cr = None if want is None else cr  # someone else's CR: only a name conflict concerns us
            async with self._tag_locks[model.name]:
                if cr is not None and cr.managed and want is not None and want.intent == "deploy":
                    # The listing is as old as this poll; the status path may have reported since.
                    fresh = await self._kube(self.kube.get_cr, namespace, cr_name)
                    cr = ExistingCR.from_object(fresh) if fresh is not None else None
                # The search is as old as this poll too: compare with the tags including writes since.
                current = self.known.model(model.name) or model
                wanted = wanted_tags(
                    model=current, want=want, action=actions_by_cr.get(cr_name), cr=cr, namespace=namespace,
                    now=self.clock(),
                )
                changes = tag_changes(current.tags, wanted)
                if changes:
                    writes += await self.write_tags(model.name, changes)
        return actions, writes

    def _failed(self, component: str, error: str) -> PollOutcome:
        self.consecutive_failures += 1
        self.metrics.mlflow_poll_errors.inc()
        if component == "mlflow":
            self.metrics.mlflow_up.set(0)
        delay = min(
            self.settings.mlflow_backoff_initial_seconds * 2 ** (self.consecutive_failures - 1),
            self.settings.mlflow_backoff_max_seconds,
        )
        if self._outage != component:
            log.warning("MLflow sync (MLflow at %s): %s; retrying with backoff (next in %.1fs, at most every %.0fs)",
                        self.settings.mlflow_tracking_uri or "the default tracking URI", error, delay,
                        self.settings.mlflow_backoff_max_seconds)
            self._outage = component
        else:
            log.debug("MLflow sync still failing (%d in a row): %s", self.consecutive_failures, error)
        return PollOutcome(ok=False, next_delay=delay, error=error)

    def _recovered(self) -> None:
        if self._outage is not None:
            log.warning("MLflow sync recovered after %d failed polls", self.consecutive_failures)
        self._outage = None
        self.consecutive_failures = 0
        self.last_success = time.monotonic()
        self._push_failures = 0
        self._push_paused_until = 0.0

    def close(self) -> None:
        """Let the MLflow threads go (a call still hanging finishes in the background)."""
        self._mlflow_threads.shutdown(wait=False, cancel_futures=True)

    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        log.info("MLflow poller started: every %.1fs, namespace %s", self.settings.mlflow_poll_interval_seconds,
                 self.settings.namespace)
        while not stop.is_set():
            outcome = await self.poll_once()
            try:
                await asyncio.wait_for(stop.wait(), outcome.next_delay)
            except asyncio.TimeoutError:
                pass

    # -- status path -------------------------------------------------------------------------------
    def pushes_paused(self) -> bool:
        """True while MLflow is failing: the poller's last poll could not reach it, or a recent push could
        not (backed off like the poller). The next successful poll writes whatever was missed."""
        return self._outage == "mlflow" or time.monotonic() < self._push_paused_until

    def _push_failed(self) -> None:
        self._push_failures += 1
        self._push_paused_until = time.monotonic() + min(
            self.settings.mlflow_backoff_initial_seconds * 2 ** (self._push_failures - 1),
            self.settings.mlflow_backoff_max_seconds,
        )

    async def push_tags_for_cr(self, cr: dict[str, Any]) -> int:
        """Write the tags for one MLflow-managed CR right after its status changed (best effort: any
        failure is left to the next poll). Returns the number of tags written.

        Costs one SET per changed tag: the model's intent and current tags come from KnownTags (a GET
        only for a model no poll has read yet), the CR is re-read under the model's lock."""
        existing = ExistingCR.from_object(cr)
        if not existing.managed or not existing.model_name or not existing.status:
            return 0
        if self.pushes_paused():
            log.debug("tag push for %s deferred to the poller: MLflow is failing", existing.name)
            return 0
        try:
            model = self.known.model(existing.model_name)
            if model is None:
                marked = self.known.mark()
                model = RegisteredModelInfo.from_mlflow(
                    await self._mlflow(f"get model {existing.model_name!r}", self.client.get_registered_model,
                                       existing.model_name)
                )
                if model.is_prompt:
                    return 0
                self.known.read(model, marked)
            want = desired_for_model(model)
            if want is None or want.intent != "deploy" or want.cr_name != existing.name:
                return 0  # the poller owns every other case (terminate, typo, tag removed)
            namespace = (cr.get("metadata") or {}).get("namespace") or self.settings.namespace
            async with self._tag_locks[model.name]:
                fresh = await self._kube(self.kube.get_cr, namespace, existing.name)
                if fresh is None:
                    return 0  # deleted meanwhile: the poller reports that
                current = self.known.model(model.name) or model  # with writes made while we waited
                wanted = wanted_tags(model=current, want=want, action=None, cr=ExistingCR.from_object(fresh),
                                     namespace=namespace, now=self.clock())
                changes = tag_changes(current.tags, wanted)
                written = await self.write_tags(model.name, changes) if changes else 0
            self._push_failures = 0
            return written
        except MlflowUnavailable as exc:
            self._push_failed()
            log.debug("tag push for %s deferred to the poller: %s", existing.name, exc)
            return 0
        except (ModelNotFound, KubeError, asyncio.TimeoutError, TimeoutError) as exc:
            log.debug("tag push for %s deferred to the poller: %s", existing.name, exc)
            return 0
        except Exception:  # noqa: BLE001 - a background task: never let it die unlogged
            log.exception("tag push for %s failed unexpectedly; the poller will catch up", existing.name)
            return 0
