"""Pure decisions of the MLflow poller: names, desired state, plan, tags (no servers needed)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from model_deploy.operator.crd import (
    ANNOTATION_REGISTERED_MODEL,
    LABEL_MANAGED_BY,
    MlflowModelSource,
    parse_spec,
)
from model_deploy.operator.mlflow_sync import (
    MLFLOW_TAG_VALUE_LIMIT,
    TAG_MESSAGE,
    TAG_NAME,
    TAG_NAMESPACE,
    TAG_STATUS,
    TAG_TIMESTAMP,
    TAG_VERSION,
    Action,
    DesiredDeployment,
    ExistingCR,
    KnownTags,
    MlflowUnavailable,
    ModelNotFound,
    RegisteredModelInfo,
    classify_mlflow_error,
    cr_manifest,
    deployment_name_for_model,
    desired_state,
    format_timestamp,
    plan,
    tag_changes,
    tags_for,
    truncate_tag_value,
    wanted_tags,
)
from model_deploy.operator.status import compute_status

NOW = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=timezone.utc)
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def model(name: str, tags: dict[str, str] | None = None, champion: str | None = None,
          versions: tuple[str, ...] = ("1",)) -> RegisteredModelInfo:
    return RegisteredModelInfo(
        name=name,
        tags=tags or {},
        aliases={"champion": champion} if champion else {},
        latest_versions=list(versions),
    )


# ------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "model_name",
    ["simple", "My Model", "lcls_cu_inj_nn", "1st-model", "a" * 80, "___", "Ünïcode módel", "x.y.z", "-edge-"],
)
def test_deployment_names_are_dns_labels(model_name):
    name = deployment_name_for_model(model_name)
    assert DNS_1035_LABEL.match(name), name
    assert len(name) <= 63
    assert deployment_name_for_model(model_name) == name  # deterministic


def test_valid_names_are_kept_and_changed_names_get_a_hash_suffix():
    assert deployment_name_for_model("simple-model") == "simple-model"
    changed = deployment_name_for_model("Simple_Model")
    assert re.fullmatch(r"simple-model-[0-9a-f]{8}", changed)


def test_names_that_normalise_alike_do_not_collide():
    names = {deployment_name_for_model(n) for n in ["my-model", "My Model", "my_model", "MY-MODEL"]}
    assert len(names) == 4


def test_long_names_sharing_a_prefix_do_not_collide():
    a, b = deployment_name_for_model("x" * 70 + "a"), deployment_name_for_model("x" * 70 + "b")
    assert a != b and len(a) == len(b) == 63


# ----------------------------------------------------------------------------------- desired state
def test_prod_and_legacy_continuous_are_deployed_case_and_space_insensitive():
    desired = desired_state([
        model("a", {"deployment_type": "prod"}),
        model("b", {"deployment_type": "  Continuous "}),
        model("c", {"deployment_type": "PROD"}),
    ])
    assert {name: d.intent for name, d in desired.items()} == {"a": "deploy", "b": "deploy", "c": "deploy"}


def test_models_without_or_with_blank_deployment_type_are_not_desired():
    assert desired_state([model("a"), model("b", {"deployment_type": "  "})]) == {}


def test_champion_alias_wins_over_latest_version():
    desired = desired_state([model("m", {"deployment_type": "prod"}, champion="2", versions=("5", "3"))])
    assert desired["m"].version == "2"


def test_latest_version_is_the_highest_number_not_the_last_string():
    desired = desired_state([model("m", {"deployment_type": "prod"}, versions=("9", "10", "2"))])
    assert desired["m"].version == "10"


@pytest.mark.parametrize("value", ["true", "TRUE", " yes ", "1", "Yes"])
def test_truthy_deployment_terminate_means_terminate(value):
    desired = desired_state([model("m", {"deployment_type": "prod", "deployment_terminate": value})])
    assert desired["m"].intent == "terminate"


@pytest.mark.parametrize("value", ["false", "no", "0", "", "maybe"])
def test_other_deployment_terminate_values_keep_the_deployment(value):
    desired = desired_state([model("m", {"deployment_type": "prod", "deployment_terminate": value})])
    assert desired["m"].intent == "deploy"


def test_invalid_deployment_type_is_reported_not_deployed():
    desired = desired_state([model("m", {"deployment_type": "prdo"})])
    assert desired["m"].intent == "invalid"
    assert desired["m"].message == "deployment_type 'prdo' is not one of prod, continuous"


def test_a_model_without_versions_is_invalid_with_a_fix():
    desired = desired_state([model("m", {"deployment_type": "prod"}, versions=())])
    assert desired["m"].intent == "invalid"
    assert "has no versions" in desired["m"].message and "register a version" in desired["m"].message


# --------------------------------------------------------------------------------------------- plan
def want(name: str, version: str = "1", intent: str = "deploy", message: str = "") -> DesiredDeployment:
    return DesiredDeployment(model_name=name, cr_name=deployment_name_for_model(name), intent=intent,
                             version=version if intent == "deploy" else None, message=message)


def have(name: str, version: str = "1", managed: bool = True, model_name: str | None = None,
         status: dict | None = None) -> ExistingCR:
    return ExistingCR(name=name, managed=managed, model_name=model_name or name, version=version,
                      status=status or {})


def kinds(actions: list[Action]) -> dict[str, str]:
    return {a.cr_name: a.kind for a in actions}


def test_plan_creates_updates_keeps_and_deletes():
    desired = {"new": want("new"), "same": want("same", "2"), "moved": want("moved", "3")}
    existing = {"same": have("same", "2"), "moved": have("moved", "2"), "orphan": have("orphan")}
    actions = plan(desired, existing)
    assert kinds(actions) == {"new": "create", "same": "noop", "moved": "update", "orphan": "delete"}
    update = next(a for a in actions if a.kind == "update")
    assert update.version == "3" and update.reason == "version 2 -> 3"


def test_plan_terminates_existing_and_is_quiet_when_already_gone():
    actions = plan({"a": want("a", intent="terminate"), "b": want("b", intent="terminate")}, {"a": have("a")})
    assert kinds(actions) == {"a": "delete", "b": "noop"}


def test_plan_never_touches_crs_it_does_not_manage():
    existing = {"mine": have("mine", managed=False)}
    assert plan({}, existing) == []
    actions = plan({"mine": want("mine")}, existing)
    assert kinds(actions) == {"mine": "noop"}
    assert "not manage" in actions[0].error and LABEL_MANAGED_BY in actions[0].error


def test_plan_leaves_a_running_deployment_alone_when_the_type_tag_has_a_typo():
    actions = plan({"m": want("m", intent="invalid", message="deployment_type 'prdo' is ...")}, {"m": have("m")})
    assert kinds(actions) == {"m": "noop"}
    assert actions[0].error.startswith("deployment_type 'prdo'")


def test_cr_manifest_carries_label_annotation_and_a_valid_spec():
    manifest = cr_manifest(want("Fancy Model", "7"), "models")
    assert manifest["metadata"]["labels"] == {LABEL_MANAGED_BY: "mlflow"}
    assert manifest["metadata"]["annotations"] == {ANNOTATION_REGISTERED_MODEL: "Fancy Model"}
    assert manifest["metadata"]["namespace"] == "models"
    spec = parse_spec(manifest["spec"])
    assert spec.model.mlflow == MlflowModelSource(name="Fancy Model", version="7")


def test_existing_cr_from_object_reads_label_annotation_version():
    cr = ExistingCR.from_object({
        "metadata": {"name": "m", "labels": {LABEL_MANAGED_BY: "mlflow"},
                     "annotations": {ANNOTATION_REGISTERED_MODEL: "M"}},
        "spec": {"model": {"mlflow": {"name": "M", "version": "4"}}},
        "status": {"phase": "running"},
    })
    assert (cr.managed, cr.model_name, cr.version, cr.status) == (True, "M", "4", {"phase": "running"})
    assert ExistingCR.from_object({"metadata": {"name": "x"}, "spec": {}}).managed is False


# --------------------------------------------------------------------------------------------- tags
def test_timestamp_is_utc_seconds_with_z():
    assert format_timestamp(NOW) == "2025-03-04T05:06:07Z"
    other_zone = NOW.astimezone(timezone(timedelta(hours=-8)))
    assert format_timestamp(other_zone) == "2025-03-04T05:06:07Z"


def test_tags_for_reads_name_version_message_from_the_status():
    status = {"deploymentName": "dep", "resolvedVersion": "3", "message": "1/1 replicas ready"}
    tags = tags_for("running", status, NOW, name="cr", namespace="ns")
    assert tags == {
        TAG_STATUS: "running", TAG_TIMESTAMP: "2025-03-04T05:06:07Z", TAG_NAME: "dep",
        TAG_NAMESPACE: "ns", TAG_VERSION: "3", TAG_MESSAGE: "1/1 replicas ready",
    }


def test_tags_for_leaves_unknown_values_out_instead_of_blanking_them():
    tags = tags_for("failed", None, NOW, message="bad")
    assert set(tags) == {TAG_STATUS, TAG_TIMESTAMP, TAG_MESSAGE}


def test_long_messages_are_truncated_to_mlflows_limit():
    tags = tags_for("failed", {"message": "x" * 20000}, NOW)
    assert len(tags[TAG_MESSAGE]) == MLFLOW_TAG_VALUE_LIMIT
    assert tags[TAG_MESSAGE].endswith("[truncated]")
    assert truncate_tag_value("short") == "short"


def test_tag_changes_writes_only_what_changed_and_keeps_the_timestamp_when_the_status_stays():
    current = tags_for("running", {"resolvedVersion": "1", "message": "ok"}, NOW, name="n", namespace="ns")
    later = NOW + timedelta(minutes=5)
    same = tags_for("running", {"resolvedVersion": "1", "message": "ok"}, later, name="n", namespace="ns")
    assert tag_changes(current, same) == {}
    reworded = tags_for("running", {"resolvedVersion": "1", "message": "still ok"}, later, name="n", namespace="ns")
    assert tag_changes(current, reworded) == {TAG_MESSAGE: "still ok"}


def test_tag_changes_moves_the_timestamp_with_the_status_or_version():
    current = tags_for("deploying", {"resolvedVersion": "1"}, NOW, name="n", namespace="ns")
    later = NOW + timedelta(seconds=42)
    running = tags_for("running", {"resolvedVersion": "1"}, later, name="n", namespace="ns")
    assert tag_changes(current, running) == {TAG_STATUS: "running", TAG_TIMESTAMP: format_timestamp(later)}
    new_version = tags_for("deploying", {"resolvedVersion": "2"}, later, name="n", namespace="ns")
    assert tag_changes(current, new_version) == {TAG_VERSION: "2", TAG_TIMESTAMP: format_timestamp(later)}


def test_tag_changes_on_a_fresh_model_writes_everything():
    wanted = tags_for("pending", None, NOW, name="n", namespace="ns", version="1", message="m")
    assert tag_changes({"deployment_type": "prod"}, wanted) == wanted


def test_wanted_tags_for_each_situation():
    m = model("m", {"deployment_type": "prod"})
    running_status = compute_status(
        generation=1, spec=parse_spec({"model": {"mlflow": {"name": "m", "version": "1"}}}), spec_error=None,
        deployment={"metadata": {"name": "m", "generation": 1},
                    "spec": {"replicas": 1},
                    "status": {"observedGeneration": 1, "updatedReplicas": 1, "availableReplicas": 1,
                               "readyReplicas": 1, "replicas": 1}},
        resolved_version="1", previous_status=None, now=NOW,
    )
    common = {"model": m, "namespace": "ns", "now": NOW}
    running = wanted_tags(want=want("m"), action=None, cr=have("m", status=running_status), **common)
    assert running[TAG_STATUS] == "running" and running[TAG_VERSION] == "1" and running[TAG_NAME] == "m"

    pending = wanted_tags(want=want("m", "4"), action=None, cr=have("m"), **common)
    assert pending[TAG_STATUS] == "pending" and pending[TAG_VERSION] == "4"

    conflict = Action(kind="noop", cr_name="m", error="name taken")
    failed = wanted_tags(want=want("m"), action=conflict, cr=None, **common)
    assert failed[TAG_STATUS] == "failed" and failed[TAG_MESSAGE] == "name taken"

    terminated = wanted_tags(want=want("m", intent="terminate"), action=None, cr=None, **common)
    assert terminated[TAG_STATUS] == "terminated" and "deployment_terminate" in terminated[TAG_MESSAGE]
    assert wanted_tags(want=want("m", intent="terminate"), action=None, cr=have("m"), **common) == {}


def test_a_model_that_lost_its_type_tag_is_terminated_once():
    was_running = model("m", {TAG_STATUS: "running"})
    tags = wanted_tags(model=was_running, want=None, action=None, cr=None, namespace="ns", now=NOW)
    assert tags[TAG_STATUS] == "terminated" and "deployment_type tag was removed" in tags[TAG_MESSAGE]
    already = model("m", {TAG_STATUS: "terminated"})
    assert wanted_tags(model=already, want=None, action=None, cr=None, namespace="ns", now=NOW) == {}


# ------------------------------------------------------------------------------------------- errors
def test_error_classification():
    not_found = classify_mlflow_error(
        MlflowException("Registered model alias x not found.", INVALID_PARAMETER_VALUE), "model 'm'"
    )
    assert isinstance(not_found, ModelNotFound) and "alias x not found" in str(not_found)
    down = classify_mlflow_error(MlflowException("API request failed: Connection refused"), "x")
    assert isinstance(down, MlflowUnavailable) and str(down) == "x: MLflow unavailable (connection refused)"
    assert isinstance(classify_mlflow_error(TimeoutError(), "x"), MlflowUnavailable)


# ------------------------------------------------------------------------------------------ known tags
def test_known_tags_overlay_writes_made_after_the_read_was_sent():
    known = KnownTags()
    assert known.model("m") is None  # never read: the status path has to GET it
    marked = known.mark()
    known.wrote("m", TAG_STATUS, "deploying")  # finished while the search was on its way
    known.read(RegisteredModelInfo(name="m", tags={"deployment_type": "prod", TAG_STATUS: "pending"}), marked)
    assert known.model("m").tags == {"deployment_type": "prod", TAG_STATUS: "deploying"}
    known.wrote("m", TAG_MESSAGE, "1/1 replicas ready")
    known.wrote("m", TAG_STATUS, "running")
    assert known.model("m").tags == {
        "deployment_type": "prod", TAG_STATUS: "running", TAG_MESSAGE: "1/1 replicas ready"}


def test_known_tags_a_read_sent_after_a_write_is_the_truth():
    known = KnownTags()
    known.wrote("m", TAG_STATUS, "running")
    marked = known.mark()
    # Someone else changed the tag after our write: the newer read wins over what we wrote.
    known.read(RegisteredModelInfo(name="m", tags={TAG_STATUS: "edited by hand"}), marked)
    assert known.model("m").tags == {TAG_STATUS: "edited by hand"}
    # An older read arriving late does not replace a newer one.
    known.read(RegisteredModelInfo(name="m", tags={TAG_STATUS: "older"}), marked - 1)
    assert known.model("m").tags == {TAG_STATUS: "edited by hand"}


def test_known_tags_a_failed_write_leaves_the_tag_unknown_so_it_is_sent_again():
    known = KnownTags()
    known.read(RegisteredModelInfo(name="m", tags={TAG_STATUS: "deploying", TAG_MESSAGE: "0/1"}), known.mark())
    known.wrote("m", TAG_MESSAGE, None)  # timed out: it may or may not have landed
    assert known.model("m").tags == {TAG_STATUS: "deploying"}
    assert tag_changes(known.model("m").tags, {TAG_STATUS: "deploying", TAG_MESSAGE: "0/1"}) == {TAG_MESSAGE: "0/1"}


def test_known_tags_retain_forgets_models_no_longer_polled():
    known = KnownTags()
    for name in ("a", "b"):
        known.read(RegisteredModelInfo(name=name), known.mark())
        known.wrote(name, TAG_STATUS, "running")
    known.retain(["a"])
    assert known.model("a") is not None and known.model("b") is None


def test_prompts_are_recognised_by_their_tag():
    assert RegisteredModelInfo(name="p", tags={"mlflow.prompt.is_prompt": "true"}).is_prompt
    assert not RegisteredModelInfo(name="m", tags={"deployment_type": "prod"}).is_prompt
