"""status.py: conditions and phase from the real Deployment status (pure; no cluster).

The Deployment dicts below copy the shapes kube-controller-manager writes (apps/v1 Deployment status,
counters omitted when 0, condition reasons from pkg/controller/deployment/util).
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import yaml

from model_deploy.operator.crd import ANNOTATION_CHECKSUM, parse_spec
from model_deploy.operator.status import (
    DEGRADED,
    PROGRESSING,
    READY,
    compute_status,
    condition,
    format_time,
    phase_from_status,
)

from . import schema_problems, version_schema

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
CHECKSUM_V3 = "a" * 64
CHECKSUM_V4 = "b" * 64
SPEC = parse_spec({"model": {"mlflow": {"name": "injector-surrogate", "alias": "champion"}}})


def deployment(
    *, generation: int, checksum: str = CHECKSUM_V3, replicas: int = 1, status: str = "", deadline: int | None = None
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "injector-surrogate",
            "namespace": "accelerator",
            "generation": generation,
            "uid": "d2c0b6de-1111-4c4e-8f51-5b1a2b7d9e10",
        },
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "Recreate"},
            "progressDeadlineSeconds": deadline or 600,
            "template": {"metadata": {"annotations": {ANNOTATION_CHECKSUM: checksum}}},
        },
        "status": yaml.safe_load(status) or {},
    }
    return obj


# Just created: the controller has not written any status yet.
JUST_CREATED = ""

# NewReplicaSetCreated, pod scheduled but not ready.
FIRST_ROLLOUT = """
observedGeneration: 1
replicas: 1
updatedReplicas: 1
unavailableReplicas: 1
conditions:
- type: Available
  status: "False"
  reason: MinimumReplicasUnavailable
  message: Deployment does not have minimum availability.
  lastTransitionTime: "2025-03-01T12:00:01Z"
  lastUpdateTime: "2025-03-01T12:00:01Z"
- type: Progressing
  status: "True"
  reason: ReplicaSetUpdated
  message: ReplicaSet "injector-surrogate-6d4cf56db6" is progressing.
  lastTransitionTime: "2025-03-01T12:00:01Z"
  lastUpdateTime: "2025-03-01T12:00:01Z"
"""

AVAILABLE = """
observedGeneration: {generation}
replicas: {n}
updatedReplicas: {n}
readyReplicas: {n}
availableReplicas: {n}
conditions:
- type: Available
  status: "True"
  reason: MinimumReplicasAvailable
  message: Deployment has minimum availability.
  lastTransitionTime: "2025-03-01T12:00:20Z"
  lastUpdateTime: "2025-03-01T12:00:20Z"
- type: Progressing
  status: "True"
  reason: NewReplicaSetAvailable
  message: ReplicaSet "injector-surrogate-6d4cf56db6" has successfully progressed.
  lastTransitionTime: "2025-03-01T12:00:01Z"
  lastUpdateTime: "2025-03-01T12:00:20Z"
"""

# Recreate rollout of generation 2: old pods gone, the new ReplicaSet's pod is starting.
RECREATE_IN_PROGRESS = """
observedGeneration: 2
replicas: 1
updatedReplicas: 1
unavailableReplicas: 1
conditions:
- type: Available
  status: "False"
  reason: MinimumReplicasUnavailable
  message: Deployment does not have minimum availability.
  lastTransitionTime: "2025-03-01T12:10:00Z"
  lastUpdateTime: "2025-03-01T12:10:00Z"
- type: Progressing
  status: "True"
  reason: ReplicaSetUpdated
  message: ReplicaSet "injector-surrogate-7f9b8c5d4" is progressing.
  lastTransitionTime: "2025-03-01T12:00:01Z"
  lastUpdateTime: "2025-03-01T12:10:00Z"
"""

DEADLINE_EXCEEDED = """
observedGeneration: 1
replicas: 1
updatedReplicas: 1
unavailableReplicas: 1
conditions:
- type: Available
  status: "False"
  reason: MinimumReplicasUnavailable
  message: Deployment does not have minimum availability.
  lastTransitionTime: "2025-03-01T12:00:01Z"
  lastUpdateTime: "2025-03-01T12:00:01Z"
- type: Progressing
  status: "False"
  reason: ProgressDeadlineExceeded
  message: ReplicaSet "injector-surrogate-6d4cf56db6" has timed out progressing.
  lastTransitionTime: "2025-03-01T12:10:01Z"
  lastUpdateTime: "2025-03-01T12:10:01Z"
"""

REPLICA_FAILURE = """
observedGeneration: 1
unavailableReplicas: 1
conditions:
- type: Progressing
  status: "True"
  reason: NewReplicaSetCreated
  message: Created new replica set "injector-surrogate-6d4cf56db6"
  lastTransitionTime: "2025-03-01T12:00:01Z"
  lastUpdateTime: "2025-03-01T12:00:01Z"
- type: Available
  status: "False"
  reason: MinimumReplicasUnavailable
  message: Deployment does not have minimum availability.
  lastTransitionTime: "2025-03-01T12:00:01Z"
  lastUpdateTime: "2025-03-01T12:00:01Z"
- type: ReplicaFailure
  status: "True"
  reason: FailedCreate
  message: 'pods "injector-surrogate-6d4cf56db6-" is forbidden: exceeded quota: compute, requested: memory=2Gi, used: memory=7Gi, limited: memory=8Gi'
  lastTransitionTime: "2025-03-01T12:00:01Z"
  lastUpdateTime: "2025-03-01T12:00:01Z"
"""

# A completed rollout whose pod stopped being ready (crash or failing /readyz): the Deployment
# controller keeps Progressing=NewReplicaSetAvailable and only flips Available.
LOST_AVAILABILITY = """
observedGeneration: 1
replicas: 1
updatedReplicas: 1
unavailableReplicas: 1
conditions:
- type: Progressing
  status: "True"
  reason: NewReplicaSetAvailable
  message: ReplicaSet "injector-surrogate-6d4cf56db6" has successfully progressed.
  lastTransitionTime: "2025-03-01T12:00:01Z"
  lastUpdateTime: "2025-03-01T12:00:20Z"
- type: Available
  status: "False"
  reason: MinimumReplicasUnavailable
  message: Deployment does not have minimum availability.
  lastTransitionTime: "2025-03-01T13:00:00Z"
  lastUpdateTime: "2025-03-01T13:00:00Z"
"""

# Scaled to zero (paused): no counters at all, Available is trivially True.
SCALED_TO_ZERO = """
observedGeneration: 3
conditions:
- type: Available
  status: "True"
  reason: MinimumReplicasAvailable
  message: Deployment has minimum availability.
  lastTransitionTime: "2025-03-01T12:00:20Z"
  lastUpdateTime: "2025-03-01T12:00:20Z"
- type: Progressing
  status: "True"
  reason: NewReplicaSetAvailable
  message: ReplicaSet "injector-surrogate-6d4cf56db6" has successfully progressed.
  lastTransitionTime: "2025-03-01T12:00:01Z"
  lastUpdateTime: "2025-03-01T12:20:00Z"
"""


def available(generation: int = 1, n: int = 1) -> str:
    return AVAILABLE.format(generation=generation, n=n)


def status_of(
    dep: dict[str, Any] | None,
    previous: dict[str, Any] | None = None,
    *,
    now: datetime = T0,
    generation: int = 1,
    spec=SPEC,
    version: str | None = "3",
    **kwargs: Any,
) -> dict[str, Any]:
    return compute_status(
        generation=generation,
        spec=spec,
        spec_error=kwargs.pop("spec_error", None),
        deployment=dep,
        resolved_version=version,
        previous_status=previous,
        now=now,
        **kwargs,
    )


def conditions_of(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {item["type"]: (item["status"], item["reason"]) for item in status["conditions"]}


# ------------------------------------------------------------------------------- happy path


def test_no_deployment_yet_is_pending():
    status = status_of(None)
    assert status["phase"] == "pending"
    assert conditions_of(status) == {
        READY: ("False", "DeploymentPending"),
        PROGRESSING: ("True", "Deploying"),
        DEGRADED: ("False", "AsExpected"),
    }
    assert status["replicas"] == 0 and status["readyReplicas"] == 0
    assert status["deploymentName"] is None


def test_just_created_deployment_is_deploying():
    status = status_of(deployment(generation=1, status=JUST_CREATED))
    assert status["phase"] == "deploying"
    assert conditions_of(status)[READY] == ("False", "RolloutInProgress")
    assert status["deploymentName"] == "injector-surrogate"
    assert status["configChecksum"] == CHECKSUM_V3


def test_first_rollout_then_ready():
    rolling = status_of(deployment(generation=1, status=FIRST_ROLLOUT))
    assert rolling["phase"] == "deploying"
    assert conditions_of(rolling)[PROGRESSING] == ("True", "Deploying")
    assert "0/1 available" in rolling["message"]

    later = T0 + timedelta(seconds=20)
    ready = status_of(deployment(generation=1, status=available()), rolling, now=later)
    assert ready["phase"] == "running"
    assert conditions_of(ready) == {
        READY: ("True", "AllReplicasReady"),
        PROGRESSING: ("False", "RolloutComplete"),
        DEGRADED: ("False", "AsExpected"),
    }
    assert ready["message"] == "1/1 replicas ready (model version 3)"
    assert ready["replicas"] == 1 and ready["readyReplicas"] == 1
    assert ready["resolvedVersion"] == "3"
    assert ready["modelUri"] == "models:/injector-surrogate/3"
    assert ready["observedGeneration"] == 1
    assert ready["lastTransitionTime"] == format_time(later)


def test_last_transition_time_moves_only_when_the_condition_status_changes():
    first = status_of(deployment(generation=1, status=FIRST_ROLLOUT))
    t1 = T0 + timedelta(seconds=5)
    still_rolling = status_of(deployment(generation=1, status=FIRST_ROLLOUT), first, now=t1)
    assert still_rolling["conditions"] == first["conditions"]
    assert still_rolling["lastTransitionTime"] == first["lastTransitionTime"] == format_time(T0)

    t2 = T0 + timedelta(seconds=30)
    ready = status_of(deployment(generation=1, status=available()), still_rolling, now=t2)
    times = {item["type"]: item["lastTransitionTime"] for item in ready["conditions"]}
    assert times[READY] == format_time(t2)  # False -> True
    assert times[PROGRESSING] == format_time(t2)  # True -> False
    assert times[DEGRADED] == format_time(T0)  # False all along


def test_every_condition_carries_the_observed_generation():
    status = status_of(deployment(generation=1, status=available()), generation=7)
    assert status["observedGeneration"] == 7
    assert {item["observedGeneration"] for item in status["conditions"]} == {7}


def test_ready_needs_every_desired_replica_updated_and_available():
    two_wanted_one_up = deployment(generation=1, replicas=2, status=available(n=1))
    status = status_of(two_wanted_one_up)
    assert conditions_of(status)[READY][0] == "False"
    assert status["phase"] == "deploying"

    both_up = deployment(generation=1, replicas=2, status=available(n=2))
    assert conditions_of(status_of(both_up))[READY] == ("True", "AllReplicasReady")


# ---------------------------------------------------------------------------------- updating


def _running_v3() -> dict[str, Any]:
    return status_of(deployment(generation=1, status=available()))


def test_new_version_while_running_is_updating_until_ready():
    running = _running_v3()
    assert running["phase"] == "running"

    # The operator applied version 4; the controller has not observed generation 2 yet.
    stale = deployment(generation=2, checksum=CHECKSUM_V4, status=available(generation=1))
    t1 = T0 + timedelta(minutes=10)
    applied = status_of(stale, running, now=t1, version="4", generation=2)
    assert applied["phase"] == "updating"
    assert conditions_of(applied)[READY] == ("False", "RolloutInProgress")
    assert conditions_of(applied)[PROGRESSING] == ("True", "Updating")
    assert applied["configChecksum"] == CHECKSUM_V4

    rolling = deployment(generation=2, checksum=CHECKSUM_V4, status=RECREATE_IN_PROGRESS)
    still = status_of(rolling, applied, now=t1 + timedelta(seconds=3), version="4", generation=2)
    assert still["phase"] == "updating"
    assert "rolling out (model version 4)" in still["message"]

    done = deployment(generation=2, checksum=CHECKSUM_V4, status=available(generation=2))
    finished = status_of(done, still, now=t1 + timedelta(seconds=30), version="4", generation=2)
    assert finished["phase"] == "running"
    assert finished["resolvedVersion"] == "4"
    assert finished["modelUri"] == "models:/injector-surrogate/4"


def test_phase_from_status_reads_the_phase_back():
    running = _running_v3()
    assert phase_from_status(running) == "running"
    assert phase_from_status(None) == "pending"
    assert phase_from_status({}) == "pending"
    assert phase_from_status({"conditions": []}) == "pending"


def test_condition_lookup():
    running = _running_v3()
    assert condition(running, READY)["status"] == "True"
    assert condition(running, "Nope") is None
    assert condition(None, READY) is None
    assert condition(deployment(generation=1, status=REPLICA_FAILURE)["status"], "ReplicaFailure")["reason"] == (
        "FailedCreate"
    )


# ---------------------------------------------------------------------------------- failures


def test_progress_deadline_exceeded_is_degraded():
    status = status_of(deployment(generation=1, status=DEADLINE_EXCEEDED))
    assert status["phase"] == "failed"
    assert conditions_of(status) == {
        READY: ("False", "ProgressDeadlineExceeded"),
        PROGRESSING: ("False", "ProgressDeadlineExceeded"),
        DEGRADED: ("True", "ProgressDeadlineExceeded"),
    }
    assert "has timed out progressing" in status["message"]


def test_replica_failure_is_degraded_with_the_controllers_message():
    status = status_of(deployment(generation=1, status=REPLICA_FAILURE))
    assert status["phase"] == "failed"
    assert conditions_of(status)[DEGRADED] == ("True", "ReplicaFailure")
    assert "exceeded quota" in status["message"]
    assert conditions_of(status)[PROGRESSING] == ("True", "Deploying")  # the controller keeps retrying


def test_lost_availability_waits_for_the_progress_deadline_then_degrades():
    running = _running_v3()
    t_lost = T0 + timedelta(hours=1)  # LOST_AVAILABILITY's Available=False transition
    lost = status_of(deployment(generation=1, status=LOST_AVAILABILITY), running, now=t_lost)
    assert conditions_of(lost)[READY] == ("False", "ReplicasUnavailable")
    assert conditions_of(lost)[DEGRADED][0] == "False"
    assert lost["phase"] == "updating"  # something changed under a running deployment

    within = status_of(deployment(generation=1, status=LOST_AVAILABILITY), lost, now=t_lost + timedelta(seconds=599))
    assert conditions_of(within)[DEGRADED][0] == "False"

    beyond = status_of(deployment(generation=1, status=LOST_AVAILABILITY), within, now=t_lost + timedelta(seconds=601))
    assert conditions_of(beyond)[DEGRADED] == ("True", "ReplicasUnavailable")
    assert beyond["phase"] == "failed"
    assert "/readyz" in beyond["message"]
    # Ready has been False since t_lost: its transition time did not move.
    assert condition(beyond, READY)["lastTransitionTime"] == format_time(t_lost)


def test_recovery_after_failure_is_running_again():
    failed = status_of(deployment(generation=1, status=DEADLINE_EXCEEDED))
    recovered = status_of(deployment(generation=1, status=available()), failed, now=T0 + timedelta(minutes=1))
    assert recovered["phase"] == "running"
    assert conditions_of(recovered)[DEGRADED] == ("False", "AsExpected")


def test_invalid_spec_is_degraded_and_keeps_the_last_known_version():
    running = _running_v3()
    problems = "spec.replicas: Input should be less than or equal to 10"
    status = status_of(
        deployment(generation=1, status=available()), running, spec=None, spec_error=problems, version=None,
        generation=2,
    )
    assert status["phase"] == "failed"
    assert conditions_of(status) == {
        READY: ("False", "InvalidSpec"),
        PROGRESSING: ("False", "InvalidSpec"),
        DEGRADED: ("True", "InvalidSpec"),
    }
    assert condition(status, DEGRADED)["message"] == problems
    assert status["message"] == problems
    assert status["resolvedVersion"] == "3"
    assert status["modelUri"] == running["modelUri"]
    assert status["observedGeneration"] == 2


def test_model_not_found_is_degraded():
    status = status_of(None, spec=SPEC, version=None, model_error=("ModelNotFound", "alias 'champion' not found"))
    assert status["phase"] == "failed"
    assert conditions_of(status)[DEGRADED] == ("True", "ModelNotFound")
    assert status["message"] == "alias 'champion' not found"
    assert status["resolvedVersion"] is None
    assert status["modelUri"] == "models:/injector-surrogate@champion"


def test_mlflow_unavailable_is_progressing_not_degraded():
    error = ("MlflowUnavailable", "MLflow at http://mlflow:5000 is unreachable; retrying in 4s")
    fresh = status_of(None, version=None, model_error=error)
    assert fresh["phase"] == "pending"
    assert conditions_of(fresh)[PROGRESSING] == ("True", "MlflowUnavailable")
    assert conditions_of(fresh)[DEGRADED][0] == "False"
    assert fresh["message"] == error[1]

    running = _running_v3()
    still_serving = status_of(deployment(generation=1, status=available()), running, version=None, model_error=error)
    assert still_serving["phase"] == "running"
    assert conditions_of(still_serving)[READY] == ("True", "AllReplicasReady")
    assert conditions_of(still_serving)[PROGRESSING] == ("True", "MlflowUnavailable")
    assert still_serving["resolvedVersion"] == "3"


# ------------------------------------------------------------------------------------ paused


def test_paused_is_not_ready_and_not_progressing():
    paused_spec = parse_spec({"model": {"mlflow": {"name": "injector-surrogate", "version": "3"}}, "paused": True})
    running = _running_v3()
    scaling_down = deployment(generation=3, replicas=0, status=available(generation=1))
    status = status_of(scaling_down, running, spec=paused_spec, generation=3)
    assert status["phase"] == "paused"
    assert conditions_of(status) == {
        READY: ("False", "Paused"),
        PROGRESSING: ("False", "Paused"),
        DEGRADED: ("False", "AsExpected"),
    }
    assert "1 pod(s) still terminating" in status["message"]

    scaled = status_of(deployment(generation=3, replicas=0, status=SCALED_TO_ZERO), status, spec=paused_spec, generation=3)
    assert scaled["message"] == "paused (spec.paused: true)"
    assert scaled["replicas"] == 0

    unpaused = status_of(deployment(generation=4, status=SCALED_TO_ZERO), scaled, generation=4)
    assert unpaused["phase"] == "deploying"


def test_unpausing_long_after_pausing_is_not_a_failure():
    """Unpausing is a scaling event: the Deployment keeps Progressing=NewReplicaSetAvailable from before
    the pause; the deadline counts from Available=False, not from when Ready went False (the pause)."""
    paused_spec = parse_spec({"model": {"mlflow": {"name": "injector-surrogate", "version": "3"}}, "paused": True})
    paused = status_of(deployment(generation=3, replicas=0, status=SCALED_TO_ZERO), spec=paused_spec, generation=3)
    days_later = T0 + timedelta(days=3)
    scaling_up = LOST_AVAILABILITY.replace("observedGeneration: 1", "observedGeneration: 4").replace(
        "2025-03-01T13:00:00Z", format_time(days_later)
    )
    unpaused = status_of(deployment(generation=4, status=scaling_up), paused, now=days_later + timedelta(seconds=5),
                         generation=4)
    assert conditions_of(unpaused)[READY] == ("False", "ReplicasUnavailable")
    assert conditions_of(unpaused)[DEGRADED] == ("False", "AsExpected")
    assert unpaused["phase"] == "deploying"
    assert condition(unpaused, READY)["lastTransitionTime"] == format_time(T0)  # False since the pause


def test_replicas_zero_is_scaled_to_zero():
    spec = parse_spec({"model": {"mlflow": {"name": "m", "version": "1"}}, "replicas": 0})
    status = status_of(deployment(generation=1, replicas=0, status=SCALED_TO_ZERO), spec=spec)
    assert conditions_of(status)[READY] == ("False", "ScaledToZero")
    assert status["phase"] == "paused"


# ------------------------------------------------------------------------------- schema & misc


@pytest.mark.parametrize(
    "status",
    [
        status_of(None),
        status_of(deployment(generation=1, status=available())),
        status_of(deployment(generation=1, status=DEADLINE_EXCEEDED)),
        status_of(None, spec=None, spec_error="spec.model: set exactly one of model.mlflow or model.local"),
    ],
    ids=["pending", "running", "failed", "invalid"],
)
def test_status_conforms_to_the_crd_status_schema(status):
    """The API server prunes status fields the CRD does not declare; nothing we write may be lost."""
    schema = version_schema()["properties"]["status"]
    present = {key: value for key, value in status.items() if value is not None}
    assert schema_problems(present, schema, "status") == []
    assert set(status) <= set(schema["properties"])


def test_local_model_has_no_version_and_its_path_as_uri():
    spec = parse_spec({"model": {"local": {"path": "/models/m"}}, "config": {"configMapRef": {"name": "c"}}})
    status = status_of(deployment(generation=1, status=available()), spec=spec, version=None)
    assert status["resolvedVersion"] is None
    assert status["modelUri"] == "/models/m"
    assert status["message"] == "1/1 replicas ready"


def test_naive_now_is_treated_as_utc_and_inputs_are_not_mutated():
    dep = deployment(generation=1, status=available())
    previous = _running_v3()
    snapshot = (copy.deepcopy(dep), copy.deepcopy(previous))
    status = status_of(dep, previous, now=datetime(2025, 3, 1, 13, 0, 0))
    assert (dep, previous) == snapshot
    assert status == previous  # nothing changed: the same status, so no needless patch
