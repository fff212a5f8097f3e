#!/usr/bin/env bash
# Builds the container image on this machine, without a registry or a base image (`make image`).
#
#   hack/image.sh build      static binary -> rootfs -> `podman build` of hack/image/Containerfile
#   hack/image.sh podman ARGS...   podman with this machine's settings (see below), e.g.
#                            `hack/image.sh podman run --rm crawler-operator:0.1.0 --version`
#   hack/image.sh install-podman   apt-get install podman + runc when podman is missing
#
# Environment:
#   IMAGE          name:tag to build (default crawler-operator:<Cargo.toml version>)
#   IMAGE_PROFILE  cargo profile of the binary: release (default; what you ship) or dev (what CI
#                  tests: the same layout, built in a fraction of the time)
#
# The binary is the x86_64-unknown-linux-gnu target linked with `crt-static` (glibc, static): the
# musl target is not installable here without a download from outside crates.io. The image has
# the same files as the Dockerfile's: /usr/local/bin/crawler-operator, /etc/ssl/certs/
# ca-certificates.crt (from the machine's ca-certificates), /etc/passwd and /etc/group naming
# UID/GID 65532; OCI labels version, revision, source.
#
# Podman settings this machine needs (docs/development.md): a containers.conf with no default
# ulimits (the sandbox refuses setrlimit), runc with cgroupfs (crun refuses hybrid cgroups). The
# `podman` subcommand applies them; `podman run` also needs `--network host` here.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

cache=${CRAWLER_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crawler-operator}
triple=x86_64-unknown-linux-gnu
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
image=${IMAGE:-crawler-operator:$version}
profile=${IMAGE_PROFILE:-release}
# The chart's `sources` is the one place the repository's address is written down.
source_url=$(awk '/^sources:/ {getline; sub(/^ *- */, ""); print; exit}' charts/crawler-operator/Chart.yaml)

install_podman() {
  if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1; then
    return
  fi
  echo "image: podman or runc is missing; installing them from Debian's packages (apt-get)" >&2
  # One lock with every other apt-get of the project (make -j runs the tool installs beside this).
  hack/apt-install.sh podman runc
}

# containers.conf: the sandbox refuses setrlimit, so no default ulimits.
containers_conf() {
  local conf="$cache/podman/containers.conf"
  if [[ ! -f $conf ]]; then
    mkdir -p "$(dirname "$conf")"
    printf '[containers]\ndefault_ulimits = []\n' > "$conf"
  fi
  echo "$conf"
}

run_podman() {
  CONTAINERS_CONF=$(containers_conf) podman --runtime runc --cgroup-manager cgroupfs "$@"
}

build() {
  install_podman
  local bundle=/etc/ssl/certs/ca-certificates.crt
  if [[ ! -s $bundle ]]; then
    echo "image: $bundle is missing: install the ca-certificates package" >&2
    exit 1
  fi

  local dir
  case $profile in
    release) dir=release ;;
    dev) dir=debug ;;
    *) echo "image: IMAGE_PROFILE must be release or dev, not '$profile'" >&2; exit 2 ;;
  esac
  local start=$SECONDS
  echo "image: cargo build --profile $profile --target $triple (crt-static)" >&2
  # Only the target's flags: build scripts and proc macros stay dynamic (they cannot be static).
  # Release matches the Dockerfile's profile settings.
  local env=(CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static")
  if [[ $profile == release ]]; then
    env+=(CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=4)
  fi
  env "${env[@]}" cargo build --locked --profile "$profile" --target "$triple" --bin crawler-operator
  local binary="target/$triple/$dir/crawler-operator"
  echo "image: binary built in $((SECONDS - start))s" >&2
  if readelf -l "$binary" | grep -q 'Requesting program interpreter'; then
    echo "image: $binary is dynamically linked; the image needs a static binary" >&2
    exit 1
  fi

  local context="target/image"
  rm -rf "$context"
  mkdir -p "$context/rootfs/usr/local/bin" "$context/rootfs/etc/ssl/certs"
  # Stripped: symbols are of no use in the image (the Dockerfile's release profile strips too).
  strip --strip-all -o "$context/rootfs/usr/local/bin/crawler-operator" "$binary"
  "$context/rootfs/usr/local/bin/crawler-operator" --version >/dev/null
  install -m 0644 "$bundle" "$context/rootfs/etc/ssl/certs/ca-certificates.crt"
  install -m 0644 hack/image/passwd hack/image/group "$context/rootfs/etc/"
  cp hack/image/Containerfile "$context/Containerfile"

  local revision
  revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    revision="$revision-dirty"
  fi
  run_podman build --quiet --file "$context/Containerfile" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url" \
    --tag "$image" "$context" >/dev/null
  local size
  size=$(run_podman image inspect --format '{{.Size}}' "$image")
  echo "image: built $image ($profile, $((size / 1024 / 1024)) MiB, revision $revision) in $((SECONDS - start))s" >&2
}

case ${1:-} in
  build) build ;;
  podman) shift; install_podman; run_podman "$@" ;;
  install-podman) install_podman ;;
  *) echo "usage: hack/image.sh build|podman ARGS...|install-podman" >&2; exit 2 ;;
esac
