"""render.py: the objects one ModelDeployment owns, built from jinja2 templates (pure, no cluster)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient

from model_deploy.operator.crd import (
    ANNOTATION_CHECKSUM,
    ANNOTATION_CR_GENERATION,
    API_VERSION,
    KIND,
    LABEL_DEPLOYMENT,
    parse_spec,
)
from model_deploy.operator.render import (
    MODEL_CACHE_DIR,
    PIPELINE_CONFIG_PATH,
    RenderError,
    config_checksum,
    metrics_service_name,
    render_objects,
    runtime_args,
    yaml_safe_json,
)
from model_deploy.operator.settings import OperatorSettings

UID = "6f1f2c1e-8d4b-4d7e-9d3a-0c6a4b1e2f3a"
MLFLOW_SPEC = {"model": {"mlflow": {"name": "injector-surrogate", "version": "3"}}}
INLINE_CONFIG = {
    "input_data": {
        "get_method": "p4p",
        "config": {"variables": {"LUME:TEST_A": {"proto": "pva", "name": "LUME:TEST_A"}}},
    },
    "input_data_to_model": {
        "type": "SimpleTransformer",
        "config": {"symbols": ["LUME:TEST_A"], "variables": {"x1": {"formula": "LUME:TEST_A"}}},
    },
}
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture
def settings() -> OperatorSettings:
    # Built explicitly: the test must not depend on the developer's MDO_* / MLFLOW_* environment.
    return OperatorSettings(
        mlflow_tracking_uri="http://mlflow.mlflow.svc:5000",
        runtime_image="registry.example/runtime:1.2.3",
        runtime_env_secret=None,
    )


def render(spec: dict[str, Any], settings: OperatorSettings, **overrides: Any) -> dict[str, dict[str, Any]]:
    arguments = {
        "name": "injector-surrogate",
        "namespace": "accelerator",
        "uid": UID,
        "generation": 4,
        "spec": parse_spec(spec),
        "settings": settings,
        "resolved_version": None,
        "config_text": None,
    }
    arguments.update(overrides)
    objects = render_objects(**arguments)
    by_kind = {obj["kind"]: obj for obj in objects}
    assert len(by_kind) == len(objects), "one object per kind"
    return by_kind


def pod_spec(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objects["Deployment"]["spec"]["template"]["spec"]


def runtime_container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = pod_spec(objects)["containers"]
    return container


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MLFLOW_SPEC)
    spec.update(changes)
    return spec


# ----------------------------------------------------------------------------------- MLflow source


def test_mlflow_source_renders_deployment_and_service_only(settings):
    objects = render(MLFLOW_SPEC, settings)
    assert sorted(objects) == ["Deployment", "Service"]
    for obj in objects.values():
        assert obj["metadata"]["namespace"] == "accelerator"
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": "injector-surrogate",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert obj["metadata"]["labels"] == {
            "app.kubernetes.io/name": "model-deploy-runtime",
            "app.kubernetes.io/instance": "injector-surrogate",
            "app.kubernetes.io/managed-by": "model-deploy-operator",
            LABEL_DEPLOYMENT: "injector-surrogate",
        }


def test_deployment_shape(settings):
    objects = render(MLFLOW_SPEC, settings)
    deployment = objects["Deployment"]
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["metadata"]["name"] == "injector-surrogate"
    assert deployment["metadata"]["annotations"][ANNOTATION_CR_GENERATION] == "4"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/instance"] == "injector-surrogate"
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template_labels.items()
    assert template_labels[LABEL_DEPLOYMENT] == "injector-surrogate"
    assert len(deployment["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CHECKSUM]) == 64


def test_runtime_container(settings):
    container = runtime_container(render(MLFLOW_SPEC, settings))
    assert container["name"] == "runtime"
    assert container["image"] == "registry.example/runtime:1.2.3"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == ["model-manager"]
    assert container["args"] == ["-n", "injector-surrogate", "-v", "3", "--metrics-port", "9100"]
    assert container["env"] == [
        {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.mlflow.svc:5000"},
        {"name": "MODEL_CACHE_DIR", "value": MODEL_CACHE_DIR},
    ]
    assert "envFrom" not in container and "resources" not in container
    assert container["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert mounts == {"/tmp": "tmp", MODEL_CACHE_DIR: "model-cache"}


def test_pod_security_and_volumes(settings):
    pod = pod_spec(render(MLFLOW_SPEC, settings))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["fsGroup"] == 10001
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    assert volumes["model-cache"] == {"name": "model-cache", "emptyDir": {}}
    for optional in ("nodeSelector", "tolerations", "serviceAccountName", "initContainers"):
        assert optional not in pod


def test_service(settings):
    service = render(MLFLOW_SPEC, settings)["Service"]
    assert service["apiVersion"] == "v1"
    assert service["metadata"]["name"] == "injector-surrogate-metrics"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"]["app.kubernetes.io/instance"] == "injector-surrogate"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}]


def test_alias_uses_the_resolved_version(settings):
    spec = {"model": {"mlflow": {"name": "m", "alias": "champion"}}}
    container = runtime_container(render(spec, settings, resolved_version="17"))
    assert container["args"][:4] == ["-n", "m", "-v", "17"]


def test_unresolved_alias_is_a_clear_error(settings):
    spec = {"model": {"mlflow": {"name": "m", "alias": "champion"}}}
    with pytest.raises(RenderError, match=r"spec\.model\.mlflow: alias 'champion' of model 'm' was not resolved"):
        render(spec, settings)


def test_tracking_uri_from_the_spec_wins_and_user_env_overrides_ours(settings):
    spec = {
        "model": {"mlflow": {"name": "m", "version": "1", "trackingUri": "http://other:5000"}},
        "env": [{"name": "MODEL_CACHE_DIR", "value": "/data/cache"}, {"name": "EPICS_PVA_NAME_SERVERS", "value": "gw"}],
    }
    env = runtime_container(render(spec, settings))["env"]
    assert env == [
        {"name": "MLFLOW_TRACKING_URI", "value": "http://other:5000"},
        {"name": "MODEL_CACHE_DIR", "value": "/data/cache"},
        {"name": "EPICS_PVA_NAME_SERVERS", "value": "gw"},
    ]


def test_no_tracking_uri_anywhere_means_no_env_var(settings):
    settings = settings.model_copy(update={"mlflow_tracking_uri": None})
    env = runtime_container(render(MLFLOW_SPEC, settings))["env"]
    assert [entry["name"] for entry in env] == ["MODEL_CACHE_DIR"]


def test_env_from_includes_the_operator_secret(settings):
    settings = settings.model_copy(update={"runtime_env_secret": "mlflow-credentials"})
    spec = spec_with(envFrom=[{"configMapRef": {"name": "epics-env"}}])
    assert runtime_container(render(spec, settings))["envFrom"] == [
        {"configMapRef": {"name": "epics-env"}},
        {"secretRef": {"name": "mlflow-credentials"}},
    ]


def test_scheduling_and_resources_come_from_the_spec(settings):
    spec = spec_with(
        image="registry.example/custom:9",
        imagePullPolicy="Always",
        resources={"limits": {"memory": "2Gi"}, "requests": {"cpu": "250m"}},
        nodeSelector={"kubernetes.io/arch": "amd64"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        serviceAccountName="model-runner",
        metricsPort=9200,
    )
    objects = render(spec, settings)
    pod, container = pod_spec(objects), runtime_container(objects)
    assert container["image"] == "registry.example/custom:9"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == {"limits": {"memory": "2Gi"}, "requests": {"cpu": "250m"}}
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["serviceAccountName"] == "model-runner"
    assert container["ports"][0]["containerPort"] == 9200
    assert container["args"][-2:] == ["--metrics-port", "9200"]
    assert objects["Service"]["spec"]["ports"][0]["port"] == 9200


# ------------------------------------------------------------------------------ config sources


def test_inline_config_becomes_a_configmap_mounted_at_the_config_path(settings):
    objects = render(spec_with(config={"inline": INLINE_CONFIG}), settings)
    assert sorted(objects) == ["ConfigMap", "Deployment", "Service"]
    configmap = objects["ConfigMap"]
    assert configmap["metadata"]["name"] == "injector-surrogate-pipeline"
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == UID
    assert yaml.safe_load(configmap["data"]["pipeline.yaml"]) == INLINE_CONFIG
    container = runtime_container(objects)
    assert container["args"] == ["-n", "injector-surrogate", "-v", "3", "-c", PIPELINE_CONFIG_PATH, "--metrics-port", "9100"]
    assert {"name": "pipeline-config", "mountPath": "/etc/model-deploy", "readOnly": True} in container["volumeMounts"]
    volumes = {volume["name"]: volume for volume in pod_spec(objects)["volumes"]}
    assert volumes["pipeline-config"]["configMap"] == {
        "name": "injector-surrogate-pipeline",
        "items": [{"key": "pipeline.yaml", "path": "pipeline.yaml"}],
    }


def test_config_map_ref_mounts_that_key_at_the_config_path(settings):
    objects = render(spec_with(config={"configMapRef": {"name": "shared-pipelines", "key": "injector.yaml"}}), settings)
    assert "ConfigMap" not in objects
    volumes = {volume["name"]: volume for volume in pod_spec(objects)["volumes"]}
    assert volumes["pipeline-config"]["configMap"] == {
        "name": "shared-pipelines",
        "items": [{"key": "injector.yaml", "path": "pipeline.yaml"}],
    }
    assert "-c" in runtime_container(objects)["args"]


def test_config_map_ref_default_key_is_pv_mappings(settings):
    objects = render(spec_with(config={"configMapRef": {"name": "shared"}}), settings)
    volumes = {volume["name"]: volume for volume in pod_spec(objects)["volumes"]}
    assert volumes["pipeline-config"]["configMap"]["items"] == [{"key": "pv_mappings.yaml", "path": "pipeline.yaml"}]


def test_no_config_means_no_dash_c(settings):
    assert "-c" not in runtime_container(render(MLFLOW_SPEC, settings))["args"]


# ------------------------------------------------------------------------------- local source


def test_local_model_on_a_pvc(settings):
    spec = {
        "model": {"local": {"path": "/models/injector/model.py:Factory", "pvc": "model-store"}},
        "config": {"inline": INLINE_CONFIG},
    }
    objects = render(spec, settings)
    container = runtime_container(objects)
    assert container["args"][:4] == ["-l", "/models/injector/model.py:Factory", "-c", PIPELINE_CONFIG_PATH]
    assert "-n" not in container["args"]
    assert {"name": "model", "mountPath": "/models/injector", "readOnly": True} in container["volumeMounts"]
    volumes = {volume["name"]: volume for volume in pod_spec(objects)["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}


def test_local_model_from_an_image_is_copied_by_an_init_container(settings):
    spec = {
        "model": {"local": {"path": "/models/injector"}, "image": "registry.example/injector-model:5"},
        "config": {"configMapRef": {"name": "pipelines"}},
    }
    pod = pod_spec(render(spec, settings))
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.example/injector-model:5"
    assert init["command"] == ["cp", "-R", "/models/.", "/model-volume/"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["model"] == {"name": "model", "emptyDir": {}}
    (container,) = pod["containers"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]


def test_local_model_path_must_be_absolute():
    from model_deploy.operator.crd import SpecError

    with pytest.raises(SpecError, match=r"spec\.model\.local: .*path must be absolute"):
        parse_spec({"model": {"local": {"path": "models/x"}}, "config": {"configMapRef": {"name": "c"}}})


# --------------------------------------------------------------------------- paused / publish / args


def test_paused_scales_to_zero_without_changing_the_pods(settings):
    running = render(spec_with(replicas=2), settings)
    paused = render(spec_with(replicas=2, paused=True), settings)
    assert running["Deployment"]["spec"]["replicas"] == 2
    assert paused["Deployment"]["spec"]["replicas"] == 0
    assert paused["Deployment"]["spec"]["template"] == running["Deployment"]["spec"]["template"]


def test_publish_flag(settings):
    assert "-p" in runtime_container(render(spec_with(publish=True), settings))["args"]
    assert "-p" not in runtime_container(render(MLFLOW_SPEC, settings))["args"]


def test_operator_default_publish_applies_only_when_the_spec_is_silent(settings):
    settings = settings.model_copy(update={"default_publish": True})
    assert "-p" in runtime_container(render(MLFLOW_SPEC, settings))["args"]
    assert "-p" not in runtime_container(render(spec_with(publish=False), settings))["args"]


def test_extra_args_come_last(settings):
    spec = spec_with(publish=True, extraArgs=["-d", "--log-level", "DEBUG"])
    assert runtime_args(spec=parse_spec(spec), settings=settings, resolved_version=None) == [
        "-n", "injector-surrogate", "-v", "3", "-p", "--metrics-port", "9100", "-d", "--log-level", "DEBUG",
    ]


# ------------------------------------------------------------------------------------- checksum


def _checksum(spec: dict[str, Any], settings: OperatorSettings, version: str | None = None, text: str | None = None):
    return config_checksum(spec=parse_spec(spec), settings=settings, resolved_version=version, config_text=text)


def test_checksum_is_on_the_pod_template(settings):
    spec = spec_with(config={"inline": INLINE_CONFIG})
    annotations = render(spec, settings)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations[ANNOTATION_CHECKSUM] == _checksum(spec, settings)


def test_checksum_changes_with_version_and_config(settings):
    alias = {"model": {"mlflow": {"name": "m", "alias": "champion"}}}
    assert _checksum(alias, settings, "3") != _checksum(alias, settings, "4")

    changed = copy.deepcopy(INLINE_CONFIG)
    changed["input_data_to_model"]["config"]["variables"]["x1"]["formula"] = "2 * LUME:TEST_A"
    assert _checksum(spec_with(config={"inline": INLINE_CONFIG}), settings) != _checksum(
        spec_with(config={"inline": changed}), settings
    )

    ref = spec_with(config={"configMapRef": {"name": "pipelines"}})
    assert _checksum(ref, settings, text="a: 1\n") != _checksum(ref, settings, text="a: 2\n")
    assert _checksum(ref, settings) != _checksum(spec_with(config={"configMapRef": {"name": "other"}}), settings)
    assert _checksum(spec_with(image="a:1"), settings) != _checksum(spec_with(image="a:2"), settings)
    assert _checksum(spec_with(publish=True), settings) != _checksum(MLFLOW_SPEC, settings)


def test_checksum_ignores_scaling_and_scheduling(settings):
    base = _checksum(MLFLOW_SPEC, settings)
    assert _checksum(spec_with(replicas=3), settings) == base
    assert _checksum(spec_with(paused=True), settings) == base
    assert _checksum(spec_with(nodeSelector={"zone": "a"}), settings) == base


def test_checksum_ignores_config_text_for_inline_configs(settings):
    spec = spec_with(config={"inline": INLINE_CONFIG})
    assert _checksum(spec, settings, text="unrelated: 1") == _checksum(spec, settings)


# ------------------------------------------------------------------------------- determinism & safety


def test_rendering_is_deterministic_and_key_order_independent(settings):
    reordered = dict(reversed(list(INLINE_CONFIG.items())))
    first = render(spec_with(config={"inline": INLINE_CONFIG}), settings)
    second = render(spec_with(config={"inline": reordered}), settings)
    assert first == second
    assert first["ConfigMap"]["data"] == second["ConfigMap"]["data"]


def test_hostile_values_stay_literal_strings(settings):
    evil_config = {
        "input_data": {"config": {"note": "x\n  evil: true", "jinja": "{{ 7 * 7 }} {% if true %}x{% endif %}"}},
        '"}]: {evil': "'; DROP",
    }
    spec = {
        "model": {"mlflow": {"name": 'm"\n  replicas: 100\n{{ name }}', "version": "1"}},
        "config": {"inline": evil_config},
        "env": [{"name": "X", "value": "a\n- name: INJECTED\n  value: '1'"}],
        "extraArgs": ["--x={{ uid }}", "#comment", "- item", "*anchor", "&a", "!!python/object:os.system"],
    }
    objects = render(spec, settings)
    container = runtime_container(objects)
    assert container["args"][1] == 'm"\n  replicas: 100\n{{ name }}'
    assert container["args"][-6:] == ["--x={{ uid }}", "#comment", "- item", "*anchor", "&a", "!!python/object:os.system"]
    assert objects["Deployment"]["spec"]["replicas"] == 1
    assert [entry["name"] for entry in container["env"]] == ["MLFLOW_TRACKING_URI", "MODEL_CACHE_DIR", "X"]
    assert container["env"][-1]["value"] == "a\n- name: INJECTED\n  value: '1'"
    assert yaml.safe_load(objects["ConfigMap"]["data"]["pipeline.yaml"]) == evil_config
    assert "evil" not in objects["ConfigMap"]["data"]
    assert sorted(objects["Deployment"]["spec"]) == ["replicas", "revisionHistoryLimit", "selector", "strategy", "template"]


@pytest.mark.parametrize(
    "value",
    [
        "emoji \U0001f600 and é",
        "unicode line breaks \u2028 \u2029 \x85",
        "C1 control \x9f, NUL \x00, BOM \ufeff, tab \t",
        {"nested": ["a", 1, 2.5, True, None, {"k": "v: w"}]},
        "",
    ],
)
def test_yaml_safe_json_round_trips(value):
    assert yaml.safe_load(yaml_safe_json(value)) == value


@pytest.mark.parametrize(
    "name",
    ["injector-surrogate", "3d-model", "a" * 63, "a.b.c", "x" * 55, "m" * 56],
)
def test_metrics_service_name_is_a_valid_unique_service_name(name):
    service = metrics_service_name(name)
    assert len(service) <= 63
    assert DNS_1035_LABEL.match(service), service
    assert service.endswith("-metrics")
    assert metrics_service_name(name + "z") != service


def test_objects_use_only_real_kubernetes_fields(settings):
    """Round-trip through the official client models: a misspelled field would be dropped."""
    client = ApiClient()
    spec = {
        "model": {"local": {"path": "/models/m/model.py:F", "pvc": "store"}},
        "config": {"inline": INLINE_CONFIG},
        "resources": {"limits": {"memory": "1Gi"}},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "nodeSelector": {"a": "b"},
        "serviceAccountName": "sa",
        "envFrom": [{"secretRef": {"name": "s"}}],
    }
    for kind, obj in render(spec, settings).items():
        model_class = {"ConfigMap": "V1ConfigMap", "Deployment": "V1Deployment", "Service": "V1Service"}[kind]
        typed = client._ApiClient__deserialize(obj, model_class)  # private, but the only dict -> model entry
        assert client.sanitize_for_serialization(typed) == obj, kind
