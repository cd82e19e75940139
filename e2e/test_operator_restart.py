"""The operator is killed (SIGKILL, no cleanup) while it is creating objects, the world changes while it is
down, and a new operator process converges: exactly one ConfigMap/Deployment/Service per CR, each owned by
its CR, nothing orphaned, edits made during the outage applied, statuses right.
"""

from __future__ import annotations

from typing import Any

import pytest

from operator_fixtures import (  # noqa: F401 - fixtures are used by name
    ANNOTATION_CHECKSUM,
    LABEL_DEPLOYMENT,
    Cluster,
    OperatorFactory,
    cluster,
    condition,
    controller_ref,
    cr_ready,
    crd,
    local_model_cr,
    namespace,
    operator_factory,
    pipeline_config,
    wait_for,
)

pytestmark = pytest.mark.e2e

CR_COUNT = 10
OWNED_KINDS = ("configmap", "deployment", "service")


def _rendered_objects(cluster: Cluster, namespace: str) -> dict[str, list[dict[str, Any]]]:
    """Every object in the namespace that carries the operator's per-CR label, by kind."""
    return {kind: cluster.list(kind, namespace, LABEL_DEPLOYMENT) for kind in OWNED_KINDS}


def _converged(cluster: Cluster, namespace: str, expect_ready: bool) -> str | None:
    """None when converged, else what is still wrong (shown if the deadline passes)."""
    crs = {cr["metadata"]["name"]: cr for cr in cluster.list("modeldeployment", namespace)}
    objects = _rendered_objects(cluster, namespace)
    for kind, items in objects.items():
        per_cr: dict[str, int] = {}
        for obj in items:
            owner = obj["metadata"]["labels"][LABEL_DEPLOYMENT]
            ref = controller_ref(obj)
            if owner not in crs:
                return f"orphaned {kind}/{obj['metadata']['name']} (CR {owner} is gone)"
            if ref is None or ref["uid"] != crs[owner]["metadata"]["uid"]:
                return f"{kind}/{obj['metadata']['name']} is not controlled by CR {owner}: {ref}"
            per_cr[owner] = per_cr.get(owner, 0) + 1
        for name in crs:
            if per_cr.get(name, 0) != 1:
                return f"CR {name} has {per_cr.get(name, 0)} {kind}(s), expected exactly 1"
    for name, cr in crs.items():
        status = cr.get("status") or {}
        if status.get("observedGeneration") != cr["metadata"]["generation"]:
            return f"CR {name}: status is for generation {status.get('observedGeneration')}, spec is " \
                   f"{cr['metadata']['generation']}"
        deployment = next(d for d in objects["deployment"] if d["metadata"]["name"] == name)
        checksum = deployment["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CHECKSUM]
        if status.get("configChecksum") != checksum:
            return f"CR {name}: status checksum {status.get('configChecksum')} != Deployment's {checksum}"
        if expect_ready and not cr_ready(cr):
            return f"CR {name} not Ready: {condition(cr, 'Ready')}"
    return None


def test_operator_killed_mid_creation_converges_after_restart(
    control_plane, cluster: Cluster, namespace: str, operator_factory: OperatorFactory
):
    # No periodic resync (300 s): convergence must come from kopf's resume/update handling at startup.
    operator = operator_factory(namespace, resync_seconds=300, name="restarted-operator")
    names = [f"restart-{i:02d}" for i in range(CR_COUNT)]
    for name in names:
        cluster.create_cr(namespace, local_model_cr(name, node_selector=control_plane.node_selector))

    # Kill it as soon as it has started writing: some CRs have objects, most have not.
    wait_for(lambda: cluster.list("deployment", namespace, LABEL_DEPLOYMENT), 60, "the first Deployment",
             interval=0.05, diagnostics=lambda: cluster.describe(namespace))
    operator.kill()
    at_kill = {kind: len(items) for kind, items in _rendered_objects(cluster, namespace).items()}
    print(f"objects when the operator was killed (of {CR_COUNT} CRs each): {at_kill}")

    # While it is down: edit one CR, delete another, and delete a third one's Deployment (drift).
    edited, deleted, drifted = names[0], names[1], names[2]
    cluster.patch_cr(namespace, edited, {"spec": {"config": {"inline": pipeline_config(scale=7.0)}}})
    cluster.delete("modeldeployment", namespace, deleted)
    cluster.delete("deployment", namespace, drifted)  # may not exist yet: then it simply gets created

    operator.start()
    wait_for(
        lambda: _converged(cluster, namespace, expect_ready=control_plane.fake_pods) is None,
        120, "convergence after the restart",
        diagnostics=lambda: f"still wrong: {_converged(cluster, namespace, control_plane.fake_pods)}\n"
        + cluster.describe(namespace),
        interval=0.5,
    )

    remaining = [n for n in names if n != deleted]
    assert sorted(cr["metadata"]["name"] for cr in cluster.list("modeldeployment", namespace)) == remaining
    # The edit made during the outage reached the ConfigMap.
    assert "* 7.0" in cluster.get("configmap", namespace, f"{edited}-pipeline")["data"]["pipeline.yaml"]
    # The deleted CR's objects were garbage-collected; the drifted Deployment is back.
    assert all(cluster.owned(kind, namespace, deleted) == [] for kind in OWNED_KINDS)
    assert cluster.get("deployment", namespace, drifted) is not None
    if control_plane.fake_pods:
        # One serving ReplicaSet per Deployment: no duplicate rollouts from the two operator lives.
        for name in remaining:
            active = [rs for rs in cluster.list("replicaset", namespace, f"app.kubernetes.io/instance={name}")
                      if (rs["spec"].get("replicas") or 0) > 0]
            assert len(active) == 1, (name, [rs["metadata"]["name"] for rs in active])
            pods = cluster.list("pod", namespace, f"app.kubernetes.io/instance={name}")
            assert len(pods) == 1 and pods[0]["status"]["phase"] == "Running", (name, len(pods))
