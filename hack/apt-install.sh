#!/usr/bin/env bash
# apt-get install PACKAGE... (Debian, Ubuntu), as root or through sudo, one install at a time.
#
# `make -j` starts the tool installs side by side (mold for the Go tools, podman for the image),
# and two apt-get runs at once fail on apt's own locks (`Could not get lock
# /var/lib/apt/lists/lock`: `DPkg::Lock::Timeout` covers the dpkg lock, not the lists lock that
# `apt-get update` takes). Every apt-get of the project goes through this script, which holds one
# lock file for the whole update + install, so the second install waits for the first.
set -euo pipefail

[[ $# -gt 0 ]] || { echo "usage: hack/apt-install.sh PACKAGE..." >&2; exit 2; }
if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-install: no apt-get here: install $* with your package manager" >&2
  exit 1
fi
sudo=()
[[ $(id -u) == 0 ]] || sudo=(sudo)

lock=${CRAWLER_APT_LOCK:-/tmp/crawler-operator-apt.lock}
exec 9>>"$lock"
if ! flock -n 9; then
  echo "apt-install: another install of this project holds $lock; waiting for it" >&2
  flock 9
fi
# Whatever the first holder installed may be what this call wanted.
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "apt-install: $* already installed" >&2
  exit 0
fi
start=$SECONDS
echo "apt-install: installing Debian's ${missing[*]} (apt-get)" >&2
"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" >/dev/null
echo "apt-install: installed ${missing[*]} in $((SECONDS - start))s" >&2
