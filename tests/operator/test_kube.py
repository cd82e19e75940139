"""kube.py against a real kube-apiserver (+ controller-manager for garbage collection) from e2e/.

Skipped with a clear reason when the control-plane binaries are not built
(`bash e2e/build-control-plane.sh`); MDO_E2E_REQUIRE=1 turns the skip into a failure.
"""

from __future__ import annotations

import functools

from typing import Any

import pytest

from tests.waiting import wait_until as poll_until

from model_deploy.operator.crd import API_VERSION, KIND
from model_deploy.operator.kube import (
    Kube,
    KubeConflict,
    KubeInvalid,
    KubeNotFound,
    KubeUnavailable,
    load_api_client,
)



wait_until = functools.partial(poll_until, timeout=30.0, interval=0.1)  # cluster operations are slower


def config_map(name: str, namespace: str, data: dict[str, str], **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, **metadata}, "data": data}


def model_deployment(name: str, namespace: str, version: str = "1", labels: dict | None = None) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {"model": {"mlflow": {"name": "m", "version": version}}},
    }


# -------------------------------------------------------------------------------------------- apply
def test_apply_creates_and_identical_reapply_changes_nothing(kube, namespace):
    first = kube.apply(config_map("cm", namespace, {"a": "1"}), "model-deploy-operator")
    again = kube.apply(config_map("cm", namespace, {"a": "1"}), "model-deploy-operator")
    assert first["data"] == {"a": "1"}
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    managers = {entry["manager"] for entry in again["metadata"]["managedFields"]}
    assert managers == {"model-deploy-operator"}


def test_apply_keeps_fields_owned_by_other_managers_and_drops_our_stale_ones(kube, namespace):
    kube.apply(config_map("cm", namespace, {"ours": "1", "stale": "x"}), "operator")
    kube.apply(config_map("cm", namespace, {}, labels={"team": "ml"}), "someone-else")
    result = kube.apply(config_map("cm", namespace, {"ours": "2"}), "operator")
    assert result["data"] == {"ours": "2"}  # 'stale' was ours and we stopped sending it
    assert result["metadata"]["labels"] == {"team": "ml"}


def test_conflicts_are_forced_or_reported_with_the_other_manager(kube, namespace):
    kube.apply(config_map("cm", namespace, {"a": "1"}), "first")
    with pytest.raises(KubeConflict, match=r'conflict with "first".*\.data\.a'):
        kube.apply(config_map("cm", namespace, {"a": "2"}), "second", force=False)
    taken = kube.apply(config_map("cm", namespace, {"a": "2"}), "second", force=True)
    assert taken["data"] == {"a": "2"}


def test_invalid_objects_name_the_field(kube, namespace):
    bad = model_deployment("bad", namespace, version="champion")
    with pytest.raises(KubeInvalid, match=r"spec\.model\.mlflow\.version"):
        kube.apply_cr(bad, "test")


def test_unknown_kinds_and_missing_fields_are_clear_errors(kube, namespace):
    with pytest.raises(KubeNotFound, match="does not serve kind Gizmo in apps/v1"):
        kube.apply({"apiVersion": "apps/v1", "kind": "Gizmo", "metadata": {"name": "x", "namespace": namespace}},
                   "test")
    with pytest.raises(ValueError, match="metadata.name"):
        kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}, "test")


def test_unreachable_api_server_is_kube_unavailable(kube_cluster):
    api_client = load_api_client(kube_cluster.kubeconfig)
    api_client.configuration.host = "https://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(KubeUnavailable, match="unreachable"):
        Kube(api_client, request_timeout=2).list_crs(None)


# ------------------------------------------------------------------------------------ custom resources
def test_cr_status_is_applied_through_the_status_subresource(kube, namespace):
    created = kube.apply_cr(model_deployment("md", namespace), "operator")
    status = {"phase": "running", "message": "1/1 replicas ready", "observedGeneration": 1}
    patched = kube.patch_cr_status(namespace, "md", status, "operator")
    assert patched["status"] == status
    assert patched["metadata"]["generation"] == created["metadata"]["generation"]  # status is not spec
    trimmed = kube.patch_cr_status(namespace, "md", {"phase": "running", "observedGeneration": 1}, "operator")
    assert "message" not in trimmed["status"]  # fields we stop sending are removed
    assert kube.get_cr(namespace, "md")["spec"] == created["spec"]


def test_status_of_a_missing_cr_is_not_found(kube, namespace):
    with pytest.raises(KubeNotFound):
        kube.patch_cr_status(namespace, "absent", {"phase": "running"}, "operator")


def test_list_filters_by_label_and_namespace_and_follows_pages(kube, namespace, kube_cluster):
    other = f"{namespace}-b"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}}, "test")
    try:
        for index in range(5):
            kube.apply_cr(model_deployment(f"md{index}", namespace, labels={"pick": str(index % 2)}), "test")
        kube.apply_cr(model_deployment("elsewhere", other, labels={"pick": "1"}), "test")
        kube.list_page_size = 2  # force the continue-token path
        assert sorted(o["metadata"]["name"] for o in kube.list_crs(namespace)) == [f"md{i}" for i in range(5)]
        assert sorted(o["metadata"]["name"] for o in kube.list_crs(namespace, "pick=1")) == ["md1", "md3"]
        everywhere = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in kube.list_crs(None, "pick=1")}
        assert {(namespace, "md1"), (namespace, "md3"), (other, "elsewhere")} <= everywhere
    finally:
        kube.delete("v1", "Namespace", None, other)


def test_get_and_delete(kube, namespace):
    assert kube.get_deployment(namespace, "absent") is None
    assert kube.get_cr(namespace, "absent") is None
    kube.apply_cr(model_deployment("md", namespace), "test")
    assert kube.delete_cr(namespace, "md") is True
    assert kube.delete_cr(namespace, "md") is False


def test_owned_objects_are_garbage_collected_with_the_cr_without_finalizers(kube, namespace):
    cr = kube.apply_cr(model_deployment("owner", namespace), "operator")
    assert not cr["metadata"].get("finalizers")
    owner = [{"apiVersion": API_VERSION, "kind": KIND, "name": "owner", "uid": cr["metadata"]["uid"],
              "controller": True, "blockOwnerDeletion": True}]
    kube.apply(config_map("owned", namespace, {"a": "1"}, ownerReferences=owner), "operator")
    assert kube.delete_cr(namespace, "owner")
    assert kube.get_cr(namespace, "owner") is None  # gone at once: nothing holds the deletion
    wait_until(lambda: kube.get_config_map(namespace, "owned") is None, timeout=60)


def test_crd_is_established(kube):
    assert kube.crd_established()
