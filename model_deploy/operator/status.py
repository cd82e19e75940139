"""Pure status computation: (spec, errors, the real Deployment, previous status) -> the CR's status.

Conditions follow the Kubernetes API conventions: Ready, Progressing and Degraded, each with status
"True"/"False"/"Unknown", a CamelCase reason, a human message, observedGeneration, and a
lastTransitionTime that only moves when that condition's status changes.

Readiness is read from the Deployment the way `kubectl rollout status` does it: the controller has
observed the latest Deployment generation and every desired replica is updated and available.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .crd import ANNOTATION_CHECKSUM, ModelDeploymentSpec

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED)

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"

# Phases (also the MLflow deployment_status tag values; "terminated" is only written by the poller).
PENDING = "pending"
DEPLOYING = "deploying"
RUNNING = "running"
UPDATING = "updating"
PAUSED = "paused"
FAILED = "failed"
TERMINATED = "terminated"
PHASES = (PENDING, DEPLOYING, RUNNING, UPDATING, PAUSED, FAILED, TERMINATED)

# Reasons the operator sets.
REASON_INVALID_SPEC = "InvalidSpec"
REASON_MODEL_NOT_FOUND = "ModelNotFound"
REASON_MLFLOW_UNAVAILABLE = "MlflowUnavailable"
REASON_PAUSED = "Paused"
REASON_SCALED_TO_ZERO = "ScaledToZero"
REASON_DEPLOYMENT_PENDING = "DeploymentPending"
REASON_DEPLOYING = "Deploying"
REASON_UPDATING = "Updating"
REASON_ROLLOUT_COMPLETE = "RolloutComplete"
REASON_ALL_REPLICAS_READY = "AllReplicasReady"
REASON_ROLLOUT_IN_PROGRESS = "RolloutInProgress"
REASON_REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
REASON_PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
REASON_REPLICA_FAILURE = "ReplicaFailure"
REASON_AS_EXPECTED = "AsExpected"

# model_error reasons that are transient (retried with backoff): Progressing, not Degraded.
TRANSIENT_MODEL_ERRORS = frozenset({REASON_MLFLOW_UNAVAILABLE})

# The Deployment controller's own vocabulary.
_DEPLOYMENT_ROLLOUT_DONE = "NewReplicaSetAvailable"
_DEFAULT_PROGRESS_DEADLINE_SECONDS = 600


@dataclass(frozen=True)
class _Condition:
    status: str
    reason: str
    message: str


# ------------------------------------------------------------------------------------------ helpers


def condition(status: dict[str, Any] | None, condition_type: str) -> dict[str, Any] | None:
    """The condition of `condition_type` in a status dict (CR or Deployment), or None."""
    for item in (status or {}).get("conditions") or []:
        if item.get("type") == condition_type:
            return item
    return None


def _is_true(status: dict[str, Any] | None, condition_type: str) -> bool:
    found = condition(status, condition_type)
    return found is not None and found.get("status") == TRUE


def phase_from_status(status: dict[str, Any] | None) -> str:
    """The phase a status dict describes (pending when there are no conditions yet)."""
    if not status or not status.get("conditions"):
        return PENDING
    ready = condition(status, READY) or {}
    progressing = condition(status, PROGRESSING) or {}
    if _is_true(status, DEGRADED):
        return FAILED
    if ready.get("reason") in (REASON_PAUSED, REASON_SCALED_TO_ZERO):
        return PAUSED
    if ready.get("status") == TRUE:
        return RUNNING
    if progressing.get("status") == TRUE and progressing.get("reason") == REASON_UPDATING:
        return UPDATING
    if status.get("deploymentName"):
        return DEPLOYING
    return PENDING


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as the API server writes metav1.Time."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# ------------------------------------------------------------------------------ deployment facts


@dataclass(frozen=True)
class RolloutFacts:
    """What the Deployment's spec and status say, with absent counters read as 0 (the API omits 0)."""

    desired: int
    generation: int
    observed_generation: int
    updated: int
    available: int
    ready: int
    replicas: int
    progress_deadline_seconds: int
    progressing: dict[str, Any] | None
    replica_failure: dict[str, Any] | None
    unavailable_since: datetime | None  # when the controller last set Available=False
    checksum: str | None
    name: str | None

    @property
    def observed(self) -> bool:
        return self.observed_generation >= self.generation

    @property
    def ready_for_traffic(self) -> bool:
        # Same rule as `kubectl rollout status`: latest generation observed, all replicas updated and up.
        return self.observed and self.desired > 0 and self.updated == self.available == self.desired

    @property
    def deadline_exceeded(self) -> bool:
        return (
            self.progressing is not None
            and self.progressing.get("status") == FALSE
            and self.progressing.get("reason") == REASON_PROGRESS_DEADLINE_EXCEEDED
        )

    @property
    def rollout_done(self) -> bool:
        """The current template finished rolling out once (pods may have become unavailable since)."""
        return (
            self.observed
            and self.updated >= self.desired
            and self.progressing is not None
            and self.progressing.get("reason") == _DEPLOYMENT_ROLLOUT_DONE
        )


def rollout_facts(deployment: dict[str, Any]) -> RolloutFacts:
    metadata = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    replica_failure = condition(status, "ReplicaFailure")
    available_condition = condition(status, "Available") or {}
    template_annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    desired = spec.get("replicas")
    return RolloutFacts(
        desired=1 if desired is None else int(desired),  # the API server defaults replicas to 1
        generation=int(metadata.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        replicas=int(status.get("replicas") or 0),
        progress_deadline_seconds=int(spec.get("progressDeadlineSeconds") or _DEFAULT_PROGRESS_DEADLINE_SECONDS),
        progressing=condition(status, "Progressing"),
        replica_failure=replica_failure if replica_failure and replica_failure.get("status") == TRUE else None,
        unavailable_since=(
            _parse_time(available_condition.get("lastTransitionTime"))
            if available_condition.get("status") == FALSE
            else None
        ),
        checksum=template_annotations.get(ANNOTATION_CHECKSUM),
        name=metadata.get("name"),
    )


# -------------------------------------------------------------------------------- condition rules


def _version_text(resolved_version: str | None) -> str:
    return f" (model version {resolved_version})" if resolved_version else ""


def _failure_conditions(reason: str, message: str, hint: str) -> dict[str, _Condition]:
    return {
        READY: _Condition(FALSE, reason, message),
        PROGRESSING: _Condition(FALSE, reason, hint),
        DEGRADED: _Condition(TRUE, reason, message),
    }


def _stopped_conditions(reason: str, facts: RolloutFacts | None) -> dict[str, _Condition]:
    what = "paused (spec.paused: true)" if reason == REASON_PAUSED else "scaled to zero (spec.replicas: 0)"
    still = facts.replicas if facts else 0
    message = f"{what}; {still} pod(s) still terminating" if still else what
    return {
        READY: _Condition(FALSE, reason, message),
        PROGRESSING: _Condition(FALSE, reason, message),
        DEGRADED: _Condition(FALSE, REASON_AS_EXPECTED, "no failures"),
    }


def _deployment_conditions(
    facts: RolloutFacts,
    *,
    resolved_version: str | None,
    updating: bool,
    now: datetime,
) -> dict[str, _Condition]:
    counts = f"{facts.updated}/{facts.desired} updated, {facts.available}/{facts.desired} available"
    if facts.ready_for_traffic:
        message = f"{facts.available}/{facts.desired} replicas ready{_version_text(resolved_version)}"
        return {
            READY: _Condition(TRUE, REASON_ALL_REPLICAS_READY, message),
            PROGRESSING: _Condition(FALSE, REASON_ROLLOUT_COMPLETE, f"rollout complete: {counts}"),
            DEGRADED: _Condition(FALSE, REASON_AS_EXPECTED, "no failures"),
        }
    if facts.deadline_exceeded:
        detail = (facts.progressing or {}).get("message") or "the rollout timed out"
        return _failure_conditions(
            REASON_PROGRESS_DEADLINE_EXCEEDED,
            f"{detail} ({counts}); check the runtime pods' events and logs",
            "the Deployment stopped progressing; a spec change starts a new rollout",
        )

    rollout_reason = REASON_UPDATING if updating else REASON_DEPLOYING
    if facts.rollout_done:
        # Pods became unavailable after a completed rollout (crash, failing readiness, scale-up or
        # unpause). The Deployment controller does not time this out, so apply its progress deadline
        # ourselves, counted from its own Available=False transition (not from our Ready condition,
        # which may have been False for another reason, e.g. Paused, for much longer).
        ready = _Condition(FALSE, REASON_REPLICAS_UNAVAILABLE, f"waiting for replicas: {counts}")
        waited = now - facts.unavailable_since if facts.unavailable_since else timedelta(0)
        if waited > timedelta(seconds=facts.progress_deadline_seconds):
            message = (
                f"replicas unavailable for more than {facts.progress_deadline_seconds}s ({counts}); "
                "check the runtime pods' readiness (/readyz) and logs"
            )
            return _failure_conditions(REASON_REPLICAS_UNAVAILABLE, message, "waiting for the replicas to recover")
    else:
        message = f"rolling out{_version_text(resolved_version)}: {counts}"
        ready = _Condition(FALSE, REASON_ROLLOUT_IN_PROGRESS, message)
    progressing = _Condition(TRUE, rollout_reason, ready.message)

    if facts.replica_failure is not None:
        message = facts.replica_failure.get("message") or "the ReplicaSet cannot create pods"
        return {
            READY: _Condition(FALSE, REASON_REPLICA_FAILURE, message),
            PROGRESSING: progressing,
            DEGRADED: _Condition(TRUE, REASON_REPLICA_FAILURE, f"{message}; fix quota, admission or RBAC errors"),
        }
    return {
        READY: ready,
        PROGRESSING: progressing,
        DEGRADED: _Condition(FALSE, REASON_AS_EXPECTED, "no failures"),
    }


def _merge_condition(
    condition_type: str,
    new: _Condition,
    previous_status: dict[str, Any],
    generation: int,
    now_text: str,
) -> dict[str, Any]:
    previous = condition(previous_status, condition_type)
    unchanged = (
        previous is not None and previous.get("status") == new.status and previous.get("lastTransitionTime")
    )
    return {
        "type": condition_type,
        "status": new.status,
        "reason": new.reason,
        "message": new.message,
        "lastTransitionTime": previous["lastTransitionTime"] if unchanged else now_text,
        "observedGeneration": generation,
    }


# ----------------------------------------------------------------------------------- entry point


def compute_status(
    *,
    generation: int,
    spec: ModelDeploymentSpec | None,
    spec_error: str | None,
    deployment: dict[str, Any] | None,
    resolved_version: str | None,
    previous_status: dict[str, Any] | None,
    now: datetime,
    model_error: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The full status of a ModelDeployment.

    `deployment`: the real Deployment as read from the API server (None when it does not exist).
    `model_error`: (reason, message) from resolving the MLflow model: MlflowUnavailable is transient
    (Progressing=True), anything else (ModelNotFound, ...) is Degraded.
    Keys whose value is None are meant to be removed (a merge patch deletes null fields).
    """
    previous = previous_status or {}
    now = now if now.tzinfo else now.replace(tzinfo=timezone.utc)
    now_text = format_time(now)
    facts = rollout_facts(deployment) if deployment is not None else None
    previous_phase = previous.get("phase")
    # A rollout while an older version/config was serving is an update, until it is ready or fails.
    updating = previous_phase in (RUNNING, UPDATING)

    transient_error = model_error if model_error and model_error[0] in TRANSIENT_MODEL_ERRORS else None
    if spec_error is not None:
        conditions = _failure_conditions(
            REASON_INVALID_SPEC, spec_error, "waiting for a spec change; the last valid spec keeps running"
        )
    elif model_error is not None and transient_error is None:
        reason, message = model_error
        conditions = _failure_conditions(reason, message, "waiting for the model to appear or the spec to change")
    elif spec is not None and (spec.paused or spec.replicas == 0):
        conditions = _stopped_conditions(REASON_PAUSED if spec.paused else REASON_SCALED_TO_ZERO, facts)
    elif facts is None:
        message = "waiting for the Deployment to be created"
        conditions = {
            READY: _Condition(FALSE, REASON_DEPLOYMENT_PENDING, message),
            PROGRESSING: _Condition(TRUE, REASON_DEPLOYING, message),
            DEGRADED: _Condition(FALSE, REASON_AS_EXPECTED, "no failures"),
        }
    else:
        conditions = _deployment_conditions(
            facts,
            resolved_version=resolved_version,
            updating=updating,
            now=now,
        )
    if transient_error is not None and conditions[DEGRADED].status != TRUE:
        # MLflow being down does not stop running pods; say we are retrying.
        conditions[PROGRESSING] = _Condition(TRUE, transient_error[0], transient_error[1])

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": [
            _merge_condition(condition_type, conditions[condition_type], previous, generation, now_text)
            for condition_type in CONDITION_TYPES
        ],
        "resolvedVersion": _resolved_version(spec, resolved_version, previous),
        "deploymentName": (facts.name if facts else None) or previous.get("deploymentName"),
        "configChecksum": (facts.checksum if facts else None) or previous.get("configChecksum"),
        "replicas": facts.replicas if facts else 0,
        "readyReplicas": facts.ready if facts else 0,
    }
    status["modelUri"] = _model_uri(spec, status["resolvedVersion"], previous)
    status["phase"] = phase_from_status(status)
    status["message"] = _summary_message(conditions)
    status["lastTransitionTime"] = (
        previous.get("lastTransitionTime") or now_text if previous_phase == status["phase"] else now_text
    )
    return status


def _resolved_version(
    spec: ModelDeploymentSpec | None, resolved_version: str | None, previous: dict[str, Any]
) -> str | None:
    if resolved_version is not None:
        return resolved_version
    if spec is None or spec.model.mlflow is not None:
        # Not resolved this time (invalid spec, MLflow down): the last known version is still deployed.
        pinned = spec.model.mlflow.version if spec is not None and spec.model.mlflow is not None else None
        return previous.get("resolvedVersion") or pinned
    return None  # a local model has no MLflow version


def _model_uri(spec: ModelDeploymentSpec | None, version: str | None, previous: dict[str, Any]) -> str | None:
    if spec is None:
        return previous.get("modelUri")
    if spec.model.mlflow is not None:
        return f"models:/{spec.model.mlflow.name}/{version}" if version else spec.model.mlflow.model_uri()
    assert spec.model.local is not None
    return spec.model.local.path


def _summary_message(conditions: dict[str, _Condition]) -> str:
    if conditions[DEGRADED].status == TRUE:
        return conditions[DEGRADED].message
    if conditions[PROGRESSING].reason in TRANSIENT_MODEL_ERRORS:
        return conditions[PROGRESSING].message
    return conditions[READY].message
