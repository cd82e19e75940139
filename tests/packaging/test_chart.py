"""The Helm chart, rendered by the real `helm` binary: lint, template, and what the objects say.

helm comes from e2e/build-control-plane.sh (or PATH, or $HELM). Without it these tests are skipped
with the reason; CI always has it (scripts/test.sh builds it before running the tests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_deploy.operator import crd
from model_deploy.operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "model-deploy-operator"
RELEASE = "mdo"
NAMESPACE = "ops"
# helm built from Go modules defaults to Kubernetes v1.20.0, below the chart's kubeVersion.
KUBE_VERSION = "1.30.0"
ALL_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


def _find_helm() -> str | None:
    candidates = [
        os.environ.get("HELM"),
        shutil.which("helm"),
        str(Path(os.environ.get("MDO_E2E_BIN", Path.home() / ".cache/model-deploy-operator/bin")) / "helm"),
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


HELM = _find_helm()
needs_helm = pytest.mark.skipif(
    HELM is None, reason="helm not installed: run `bash e2e/build-control-plane.sh helm` (CI does)"
)


def run_helm(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess:
    assert HELM is not None
    return subprocess.run(
        [HELM, *args[:1], *((RELEASE,) if args[0] == "template" else ()), str(chart), *args[1:]],
        capture_output=True, text=True, timeout=60,
    )


@lru_cache(maxsize=None)
def render(*flags: str, chart: Path = CHART) -> tuple[dict[str, Any], ...]:
    """Rendered objects for `helm template` with these flags (cached: each render is a subprocess)."""
    result = run_helm("template", "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *flags, chart=chart)
    assert result.returncode == 0, f"helm template {' '.join(flags)} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(docs, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs, kind: str) -> dict[str, Any]:
    found = objects(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_container(docs) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(container) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container["env"]}


def rule_triples(rules) -> set[tuple[str, str, str]]:
    """RBAC rules as a set of (apiGroup, resource, verb): order and grouping do not matter."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def triples(group: str, resources: list[str], verbs: set[str]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for resource in resources for verb in verbs}


NAMESPACED_RULES = (
    triples(crd.GROUP, [crd.PLURAL, f"{crd.PLURAL}/status"], ALL_VERBS)
    | triples("apps", ["deployments"], ALL_VERBS)
    | triples("", ["configmaps", "services"], ALL_VERBS)
    | triples("", ["events"], {"create", "patch"})
)
CLUSTER_ONLY_RULES = triples("apiextensions.k8s.io", ["customresourcedefinitions"], {"get", "list", "watch"}) | triples(
    "", ["namespaces"], {"list", "watch"}
)


# ---------------------------------------------------------------------------------------- chart files


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.27.0-0"
    assert chart["appVersion"] == "0.1.0"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in pyproject, "appVersion must match the package version"


def test_chart_crd_is_identical_to_crds_dir():
    source = ROOT / "crds" / "modeldeployment.yaml"
    copy = CHART / "crds" / "modeldeployment.yaml"
    assert source.exists(), "crds/modeldeployment.yaml is missing"
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}; fix: cp {source.relative_to(ROOT)} "
        f"{copy.parent.relative_to(ROOT)}/"
    )
    crd_doc = yaml.safe_load(copy.read_text())
    assert crd_doc["spec"]["group"] == crd.GROUP
    assert crd_doc["spec"]["names"]["plural"] == crd.PLURAL


def test_values_file_is_documented():
    """Every top-level key of values.yaml has a comment above it (alone or as the first of a group
    of keys), so `helm show values` explains itself."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for index, line in enumerate(lines):
        if not line or line[0].isspace() or line.startswith("#") or ":" not in line:
            continue
        above = index - 1
        while above >= 0 and lines[above] and not lines[above][0].isspace() and not lines[above].startswith("#"):
            above -= 1  # a key in a group of keys documented together
        if above < 0 or not lines[above].startswith("#"):
            undocumented.append(line.split(":")[0])
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"


# ---------------------------------------------------------------------------------------- helm lint


@needs_helm
@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--set", "rbac.clusterWide=false"],
        ["--set", "serviceMonitor.enabled=true"],
        ["--set", "mlflow.existingSecret=mlflow-creds"],
    ],
    ids=["defaults", "namespaced", "servicemonitor", "existing-secret"],
)
def test_helm_lint(flags):
    result = run_helm("lint", "--strict", "--namespace", NAMESPACE, *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@needs_helm
def test_kube_version_below_127_is_refused():
    result = run_helm("template", "--kube-version", "1.26.0")
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr


# ---------------------------------------------------------------------------------------- Deployment


@needs_helm
def test_operator_deployment_is_single_recreate_and_non_root():
    docs = render()
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the images' uid
    container = operator_container(docs)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["image"] == "ghcr.io/slaclab/model-deploy-operator:0.1.0"
    assert container["command"] == ["model-deploy-operator"]
    # the selector must select the pod template
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]


@needs_helm
def test_replicas_cannot_be_raised_from_values():
    """One operator only (kopf --standalone has no peering): replicas is not a value."""
    docs = render("--set", "replicas=3", "--set", "replicaCount=3")
    assert one(docs, "Deployment")["spec"]["replicas"] == 1


@needs_helm
def test_liveness_probe_and_metrics_service_use_the_operator_port():
    docs = render("--set", "metrics.port=9300", "--set", "metrics.kopfLivenessPort=9301")
    container = operator_container(docs)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == 9300
    assert ports["http-kopf"] == 9301
    assert env_of(container)["MDO_METRICS_PORT"]["value"] == "9300"
    assert env_of(container)["MDO_LIVENESS_PORT"]["value"] == "9301"
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == probe["port"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


@needs_helm
def test_operator_env_is_what_operator_settings_reads(monkeypatch):
    """The chart's MDO_* values, fed to the real OperatorSettings, give the values asked for."""
    docs = render(
        "--set", "operator.watchNamespaces={ops,models}",
        "--set", "operator.mlflowPoll.intervalSeconds=42",
        "--set", "runtime.image.repository=registry.example/runtime",
        "--set", "runtime.image.tag=1.2.3",
        "--set", "runtime.envSecret=runtime-creds",
    )
    env = env_of(operator_container(docs))
    for name in list(os.environ):
        if name.startswith("MDO_"):
            monkeypatch.delenv(name)
    for name, item in env.items():
        if name.startswith("MDO_"):
            assert "value" in item, f"{name} should be a literal value"
            monkeypatch.setenv(name, item["value"])
    settings = OperatorSettings()
    assert settings.namespace == NAMESPACE
    assert settings.watch_namespaces == ["ops", "models"]
    assert settings.mlflow_poll_interval_seconds == 42
    assert settings.mlflow_poll_enabled is True
    assert settings.runtime_image == "registry.example/runtime:1.2.3"
    assert settings.runtime_env_secret == "runtime-creds"
    assert settings.metrics_port == 8080
    assert settings.liveness_port == 8081
    assert settings.kopf_scanning_disabled is False  # cluster-wide RBAC may scan CRDs and namespaces
    assert json.loads(env["MDO_WATCH_NAMESPACES"]["value"]) == ["ops", "models"]


@needs_helm
def test_runtime_gets_the_mlflow_secret_by_default_and_none_when_disabled():
    env = env_of(operator_container(render()))
    assert env["MDO_RUNTIME_ENV_SECRET"]["value"] == f"{RELEASE}-model-deploy-operator-mlflow"
    assert env["MDO_RUNTIME_IMAGE"]["value"] == "ghcr.io/slaclab/model-deploy-runtime:0.1.0"
    env = env_of(operator_container(render("--set", "runtime.shareMlflowSecret=false")))
    assert "MDO_RUNTIME_ENV_SECRET" not in env


# ---------------------------------------------------------------------------------------- MLflow secret

MLFLOW_KEYS = [
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_S3_ENDPOINT_URL",
]


def assert_secret_env(container, secret_name: str) -> None:
    env = env_of(container)
    for key in MLFLOW_KEYS:
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret_name and ref["key"] == key
        # The URI is required (the operator cannot work without it); credentials are optional.
        assert ref.get("optional", False) is (key != "MLFLOW_TRACKING_URI"), key


@needs_helm
def test_chart_creates_the_mlflow_secret_from_values():
    docs = render(
        "--set", "mlflow.trackingUri=https://mlflow.example:5000",
        "--set", "mlflow.username=alice",
        "--set", "mlflow.password=s3cret",
        "--set", "mlflow.s3.endpointUrl=https://s3.example",
        "--set", "mlflow.s3.accessKeyId=AKIA",
        "--set", "mlflow.s3.secretAccessKey=shh",
    )
    secret = one(docs, "Secret")
    assert secret["stringData"] == {
        "MLFLOW_TRACKING_URI": "https://mlflow.example:5000",
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": "s3cret",
        "MLFLOW_S3_ENDPOINT_URL": "https://s3.example",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "shh",
    }
    assert_secret_env(operator_container(docs), secret["metadata"]["name"])
    # Credentials never appear in the Deployment itself.
    assert "s3cret" not in yaml.safe_dump(one(docs, "Deployment"))
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/mlflow-secret" in annotations


@needs_helm
def test_secret_checksum_changes_with_credentials():
    def checksum(password: str) -> str:
        docs = render("--set", f"mlflow.password={password}")
        return one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/mlflow-secret"]

    assert checksum("one") != checksum("two")


@needs_helm
def test_unset_credentials_are_left_out_of_the_secret():
    secret = one(render(), "Secret")
    assert set(secret["stringData"]) == {"MLFLOW_TRACKING_URI"}


@needs_helm
def test_existing_secret_is_used_and_none_is_created():
    docs = render("--set", "mlflow.existingSecret=site-mlflow")
    assert objects(docs, "Secret") == []
    assert_secret_env(operator_container(docs), "site-mlflow")
    assert env_of(operator_container(docs))["MDO_RUNTIME_ENV_SECRET"]["value"] == "site-mlflow"


# ---------------------------------------------------------------------------------------- RBAC


@needs_helm
def test_cluster_wide_rbac_is_exactly_the_needed_permissions():
    docs = render()
    assert objects(docs, "Role") == [] and objects(docs, "RoleBinding") == []
    role = one(docs, "ClusterRole")
    assert rule_triples(role["rules"]) == NAMESPACED_RULES | CLUSTER_ONLY_RULES
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"],
    }
    service_account = one(docs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": service_account["name"], "namespace": NAMESPACE}
    ]
    assert json.loads(env_of(operator_container(docs))["MDO_WATCH_NAMESPACES"]["value"]) == []


@needs_helm
@pytest.mark.parametrize(
    "flags, namespaces",
    [
        ([], [NAMESPACE]),
        (["--set", "operator.watchNamespaces={models,ops}"], ["models", "ops"]),
        (["--set", "operator.watchNamespaces={models}", "--set", "operator.namespace=models"], ["models"]),
    ],
    ids=["release-namespace", "two-namespaces", "elsewhere"],
)
def test_namespaced_rbac_has_a_role_per_watched_namespace(flags, namespaces):
    docs = render("--set", "rbac.clusterWide=false", *flags)
    assert objects(docs, "ClusterRole") == [] and objects(docs, "ClusterRoleBinding") == []
    roles = objects(docs, "Role")
    bindings = objects(docs, "RoleBinding")
    assert sorted(role["metadata"]["namespace"] for role in roles) == sorted(namespaces)
    assert sorted(binding["metadata"]["namespace"] for binding in bindings) == sorted(namespaces)
    for role in roles:
        assert rule_triples(role["rules"]) == NAMESPACED_RULES
    service_account = one(docs, "ServiceAccount")["metadata"]["name"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}]
    env = env_of(operator_container(docs))
    assert json.loads(env["MDO_WATCH_NAMESPACES"]["value"]) == namespaces
    # no cluster-scoped permissions: kopf must not scan CRDs/namespaces
    assert env["MDO_KOPF_SCANNING_DISABLED"]["value"] == "true"


@needs_helm
def test_rbac_create_false_renders_no_rbac():
    docs = render("--set", "rbac.create=false")
    assert not any(doc["kind"] in {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} for doc in docs)


# ---------------------------------------------------------------------------------------- ServiceMonitor

MONITORING_API = ("--api-versions", "monitoring.coreos.com/v1")


@needs_helm
@pytest.mark.parametrize(
    "flags, expected",
    [
        ((), False),
        (MONITORING_API, False),
        (("--set", "serviceMonitor.enabled=true"), False),
        (("--set", "serviceMonitor.enabled=true", *MONITORING_API), True),
    ],
    ids=["disabled", "disabled-api-present", "enabled-api-missing", "enabled-api-present"],
)
def test_service_monitor_only_when_enabled_and_api_exists(flags, expected):
    docs = render(*flags)
    monitors = objects(docs, "ServiceMonitor")
    assert len(monitors) == (1 if expected else 0)
    if expected:
        monitor = monitors[0]
        service = one(docs, "Service")
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        port_names = {port["name"] for port in service["spec"]["ports"]}
        assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["http-metrics"]
        assert "http-metrics" in port_names


# ---------------------------------------------------------------------------------------- bad values


@needs_helm
@pytest.mark.parametrize(
    "flags, field",
    [
        (["--set", "rbac.clusterWide=false", "--set", "operator.watchNamespaces={models}"], "operator.namespace"),
        (["--set", "mlflow.trackingUri="], "mlflow.trackingUri"),
        (["--set", "metrics.port=80"], "metrics.port"),
        (["--set", "metrics.kopfLivenessPort=8080"], "metrics.kopfLivenessPort"),
        (["--set", "serviceAccount.create=false"], "serviceAccount.name"),
    ],
    ids=["target-namespace-not-watched", "no-tracking-uri", "privileged-port", "port-clash", "no-service-account"],
)
def test_bad_values_fail_naming_the_field(flags, field):
    result = run_helm("template", "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *flags)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------- NOTES.txt


@needs_helm
def test_notes_render_next_steps(tmp_path):
    """NOTES.txt through the real template engine (helm template skips NOTES, and `install --dry-run`
    cannot set the Kubernetes version): a copy of the chart wraps it in a probe ConfigMap."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes_probe.tpl").write_text('{{- define "notes.probe" -}}\n' + notes + "{{- end }}\n")
    (chart / "templates" / "notes-probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-probe\n"
        'data:\n  notes: {{ include "notes.probe" . | toJson }}\n'
    )
    text = one(render("--set", "serviceMonitor.enabled=true", chart=chart), "ConfigMap")["data"]["notes"]
    assert f"rollout status deployment/{RELEASE}-model-deploy-operator" in text
    assert "kubectl get modeldeployments" in text
    assert "every namespace" in text
    assert "WARNING: serviceMonitor.enabled=true" in text  # no monitoring API given
    text = one(render("--set", "rbac.clusterWide=false", *MONITORING_API, chart=chart), "ConfigMap")["data"]["notes"]
    assert f"watches ModelDeployments in: {NAMESPACE}" in text
    assert "WARNING" not in text
