# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this
# Shared by hack/cluster.sh and hack/demo.sh (sourced, not run): where the demo lives, its ports,
# and how its background processes are started, found and stopped.
#
#   CRAWLER_DEMO_DIR        state: certificates, kubeconfigs, etcd data, logs, pid files, output
#                           (default ~/.cache/crawler-operator/demo; outside the repo)
#   CRAWLER_DEMO_PORT_BASE  loopback ports used: BASE+1.. (default 16400, see ports below)

demo_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO_DIR=${CRAWLER_DEMO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/crawler-operator/demo}
# Absolute, so the paths written into kubeconfigs and printed to the user work from anywhere.
case $DEMO_DIR in /*) ;; *) DEMO_DIR=$PWD/$DEMO_DIR ;; esac
DEMO_MARKER=$DEMO_DIR/.crawler-operator-demo # only a directory carrying it is ever removed
PIDS=$DEMO_DIR/pids
LOGS=$DEMO_DIR/logs
PKI=$DEMO_DIR/pki
TOOLS=$("$demo_repo/hack/install-tools.sh" --print-dir)
KUBECTL=$TOOLS/kubectl
export KUBECONFIG=$DEMO_DIR/kubeconfig

BASE=${CRAWLER_DEMO_PORT_BASE:-16400}
if ! [[ $BASE =~ ^[0-9]+$ ]] || ((BASE < 1024 || BASE > 65000)); then
  echo "CRAWLER_DEMO_PORT_BASE=$BASE: expected a number between 1024 and 65000" >&2
  exit 2
fi
PORT_ETCD=$((BASE + 1))
PORT_ETCD_PEER=$((BASE + 2))
PORT_APISERVER=$((BASE + 43))
PORT_KWOK=$((BASE + 47))
PORT_KCM=$((BASE + 57))
PORT_SCHEDULER=$((BASE + 59))
PORT_SITE=$((BASE + 80))
PORT_POSTGRES=$((BASE + 85))
PORT_CONTROLLER0=$((BASE + 90)) # controller-N: BASE+90+N (N = 1..9)
PORT_WORKER0=$((BASE + 100))    # worker processes: BASE+100.. BASE+199, one per worker Pod

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not on PATH: $2"; }

port_in_use() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Every process the demo starts carries this in its environment; stop_proc checks it before
# sending a signal, so a stale pid file never hits someone else's process.
DEMO_TAG="CRAWLER_DEMO_OWNER=$DEMO_DIR"

# start_proc NAME CMD...: runs CMD in the background in its own session (so Ctrl+C in the
# terminal that ran `make demo` does not reach it), stdin closed, stdout+stderr appended to
# $LOGS/NAME.log, pid in $PIDS/NAME.pid.
start_proc() {
  local name=$1; shift
  mkdir -p "$PIDS" "$LOGS"
  # setsid execs (it does not fork: a background job of a script is no process-group leader), so
  # $! is the pid of the command itself.
  env "$DEMO_TAG" setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
}

# pid_of NAME: prints the pid if that process runs and is ours; fails otherwise.
pid_of() {
  local f=$PIDS/$1.pid pid
  [[ -f $f ]] || return 1
  read -r pid <"$f" || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # A zombie (exited, not yet reaped by its parent) counts as gone.
  [[ -r /proc/$pid/stat && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
  { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qxF "$DEMO_TAG" || return 1
  echo "$pid"
}

running() { pid_of "$1" >/dev/null; }

# stop_procs SIGNAL NAME...: signals them all, waits up to 15 s for them to exit, then SIGKILLs
# what is left. Removes their pid files.
stop_procs() {
  local sig=$1 name pid left i; shift
  for name in "$@"; do
    pid=$(pid_of "$name") && kill "-$sig" "$pid" 2>/dev/null
  done
  for ((i = 0; i < 150; i++)); do
    left=0
    for name in "$@"; do running "$name" && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for name in "$@"; do
    pid=$(pid_of "$name") && { echo "    $name did not stop within 15 s: SIGKILL" >&2; kill -KILL "$pid" 2>/dev/null; }
    rm -f "$PIDS/$name.pid"
  done
}

# stop_strays: SIGKILLs any process still carrying this demo's tag (a child a stopped process left
# behind); there should be none.
stop_strays() {
  local f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}; pid=${pid%/environ}
    [[ $pid != "$$" && $pid != "$BASHPID" ]] || continue
    if { tr '\0' '\n' <"$f"; } 2>/dev/null | grep -qxF "$DEMO_TAG"; then
      echo "    stray process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80)): SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null
    fi
  done
}

# names_like PREFIX: names of the pid files starting with PREFIX.
names_like() {
  local f
  for f in "$PIDS/$1"*.pid; do
    [[ -e $f ]] || continue
    f=${f##*/}; echo "${f%.pid}"
  done
}

# wait_until SECONDS WHAT CMD...: polls CMD every 0.5 s; fails with WHAT if it never succeeds.
wait_until() {
  local secs=$1 what=$2 deadline; shift 2
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "error: timed out after ${secs}s waiting for $what" >&2; return 1; }
    sleep 0.5
  done
}

kc() { "$KUBECTL" "$@"; }
