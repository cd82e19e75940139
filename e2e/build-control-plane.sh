#!/usr/bin/env bash
# Build (once, cached) the binaries of a real Kubernetes control plane from Go
# modules only: kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok and helm. Needs nothing but Go and the Go module proxy.
#
#   bash e2e/build-control-plane.sh            # build whatever is missing
#   bash e2e/build-control-plane.sh etcd kwok  # only these components
#   MDO_E2E_REBUILD=1 bash e2e/build-control-plane.sh   # ignore stamps
#
# Components: k8s (apiserver, controller-manager, scheduler, kubectl), etcd,
# kwok, helm. Output: ${MDO_E2E_BIN:-$HOME/.cache/model-deploy-operator/bin}.
# A binary is skipped when it exists and its stamp file
# (<bin>/.stamps/<name>) holds the expected version.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${MDO_E2E_BIN:-$HOME/.cache/model-deploy-operator/bin}"
K8S_VERSION="${MDO_K8S_VERSION:-v1.36.3}"
# etcd: the first version the module proxy serves wins.
ETCD_VERSIONS="${MDO_ETCD_VERSIONS:-v3.6.16 v3.6.15 v3.6.14 v3.6.13}"
KWOK_VERSION="${MDO_KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${MDO_HELM_VERSION:-v3.21.4}"

STAMPS="$BIN/.stamps"
mkdir -p "$BIN" "$STAMPS"
GOVER="$(go env GOVERSION)"
# -mod=mod: let the go command update go.mod/go.sum of the wrapper modules.
export GOFLAGS="${GOFLAGS:-} -mod=mod"
export CGO_ENABLED="${CGO_ENABLED:-0}"

log() { printf '[build-control-plane %(%H:%M:%S)T] %s\n' -1 "$*"; }

# up_to_date NAME STAMP -> 0 when $BIN/NAME exists and its stamp matches.
up_to_date() {
  [[ "${MDO_E2E_REBUILD:-0}" != 1 && -x "$BIN/$1" && -f "$STAMPS/$1" ]] &&
    [[ "$(cat "$STAMPS/$1")" == "$2" ]]
}
stamp() { printf '%s\n' "$2" >"$STAMPS/$1"; }

# mod_field JSON_FIELD <<< "$(go mod download -json ...)"
mod_field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" | head -n1; }

want() { # want COMPONENT -> 0 when it was asked for (all by default)
  [[ ${#WANTED[@]} -eq 0 ]] && return 0
  local w; for w in "${WANTED[@]}"; do [[ "$w" == "$1" ]] && return 0; done
  return 1
}
WANTED=("$@")

# ---------------------------------------------------------------- kubernetes
gen_k8s_gomod() {
  local dir="$HERE/gomod/k8s" staging info kmod gover m
  staging="v0.${K8S_VERSION#v1.}"
  if [[ -f "$dir/go.mod" && -f "$dir/go.sum" ]] &&
     grep -q "k8s.io/kubernetes $K8S_VERSION\$" "$dir/go.mod"; then
    return 0
  fi
  log "generating $dir/go.mod for k8s.io/kubernetes $K8S_VERSION (staging $staging)"
  info="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION")"
  kmod="$(mod_field GoMod <<<"$info")"
  [[ -f "$kmod" ]] || { echo "no go.mod for k8s.io/kubernetes@$K8S_VERSION: $info" >&2; exit 1; }
  gover="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kmod")"
  (
    cd "$dir"
    rm -f go.mod go.sum
    go mod init model-deploy-operator/e2e/gomod/k8s >/dev/null 2>&1
    go mod edit -go="$gover" -godebug=default=go"${gover%.*}" \
      -require="k8s.io/kubernetes@$K8S_VERSION"
    # Every staging module k8s.io/kubernetes replaces with ./staging/src/...
    for m in $(sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "$kmod"); do
      go mod edit -replace="$m=$m@$staging"
    done
    go mod tidy
  )
}

build_k8s() {
  local names=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  local want_stamp="$K8S_VERSION $GOVER" todo=() n minor
  for n in "${names[@]}"; do up_to_date "$n" "$want_stamp" || todo+=("$n"); done
  if [[ ${#todo[@]} -eq 0 ]]; then log "k8s $K8S_VERSION: up to date"; return 0; fi
  gen_k8s_gomod
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  local pkgs=(); for n in "${todo[@]}"; do pkgs+=("./cmd/$n"); done
  log "building ${todo[*]} ($K8S_VERSION); this takes a long time on 2 cores"
  local t0=$SECONDS
  (cd "$HERE/gomod/k8s" && go build -p "${MDO_E2E_BUILD_P:-2}" -trimpath -ldflags "$ld" -o "$BIN/" "${pkgs[@]}")
  for n in "${todo[@]}"; do stamp "$n" "$want_stamp"; done
  log "built ${todo[*]} in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------- etcd
build_etcd() {
  local dir="$HERE/gomod/etcd" v cur=""
  if [[ -f "$dir/go.mod" ]]; then
    cur="$(sed -n 's#^[[:space:]]*require go.etcd.io/etcd/server/v3 \(v[^ ]*\).*#\1#p; s#^[[:space:]]*go.etcd.io/etcd/server/v3 \(v[^ ]*\).*#\1#p' "$dir/go.mod" | head -n1)"
  fi
  if [[ -n "$cur" ]] && up_to_date etcd "$cur $GOVER"; then
    log "etcd $cur: up to date"; return 0
  fi
  if [[ -z "$cur" || ! -f "$dir/go.sum" ]]; then
    for v in $ETCD_VERSIONS; do
      if go mod download -json "go.etcd.io/etcd/server/v3@$v" >/dev/null 2>&1; then cur="$v"; break; fi
      log "etcd $v not served, trying the next one"
    done
    [[ -n "$cur" ]] || { echo "no etcd version of [$ETCD_VERSIONS] is served" >&2; exit 1; }
    log "generating $dir/go.mod for go.etcd.io/etcd/server/v3 $cur"
    (
      cd "$dir"
      rm -f go.mod go.sum
      go mod init model-deploy-operator/e2e/gomod/etcd >/dev/null 2>&1
      # Low go line: tidy raises it to what the dependencies need (not to
      # this machine's toolchain, which go mod init would write).
      go mod edit -go=1.21 -require="go.etcd.io/etcd/server/v3@$cur"
      go mod tidy
    )
  fi
  log "building etcd $cur"
  local t0=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" ./cmd/etcd)
  stamp etcd "$cur $GOVER"
  log "built etcd in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------- kwok
build_kwok() {
  local info moddir t0=$SECONDS
  if ! up_to_date kwok "$KWOK_VERSION $GOVER"; then
    log "installing kwok $KWOK_VERSION"
    # (kwok's own version constant is already right: no -X needed.)
    GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    stamp kwok "$KWOK_VERSION $GOVER"
    log "built kwok in $((SECONDS - t0))s"
  else
    log "kwok $KWOK_VERSION: up to date"
  fi
  # kwok >= 0.8 ships no default stages; keep a copy of the module's stage
  # YAMLs next to the binary so the runtime does not need GOMODCACHE.
  if [[ ! -f "$BIN/kwok-stages/$KWOK_VERSION/.complete" ]]; then
    info="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION")"
    moddir="$(mod_field Dir <<<"$info")"
    [[ -d "$moddir/kustomize/stage" ]] || { echo "kwok stages not found in $moddir" >&2; exit 1; }
    rm -rf "$BIN/kwok-stages/$KWOK_VERSION"
    mkdir -p "$BIN/kwok-stages/$KWOK_VERSION"
    cp -r "$moddir/kustomize/stage/." "$BIN/kwok-stages/$KWOK_VERSION/"
    chmod -R u+w "$BIN/kwok-stages/$KWOK_VERSION"
    touch "$BIN/kwok-stages/$KWOK_VERSION/.complete"
    log "copied kwok stage YAMLs to $BIN/kwok-stages/$KWOK_VERSION"
  fi
}

# ---------------------------------------------------------------------- helm
build_helm() {
  local t0=$SECONDS
  if up_to_date helm "$HELM_VERSION $GOVER"; then log "helm $HELM_VERSION: up to date"; return 0; fi
  log "installing helm $HELM_VERSION"
  GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  stamp helm "$HELM_VERSION $GOVER"
  log "built helm in $((SECONDS - t0))s"
}

T0=$SECONDS
log "output dir: $BIN ($GOVER)"
# Resolve the k8s wrapper module first: cheap, and it fails early if anything is off.
want k8s && gen_k8s_gomod
want etcd && build_etcd
want kwok && build_kwok
want helm && build_helm
want k8s && build_k8s
log "done in $((SECONDS - T0))s"
ls -l "$BIN"
