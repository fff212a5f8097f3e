#!/usr/bin/env bash
# The whole system on this machine, on a local cluster (hack/cluster.sh). docs/demo.md walks
# through it.
#
#   hack/demo.sh up                    (make demo) cluster, chart, controller, one worker process
#                                      per worker Pod, a local web site, a PostgreSQL result
#                                      store, the sample resources
#   hack/demo.sh rows                  the stored pages per resource (psql), and a few rows
#   hack/demo.sh down                  (make demo-down) stop everything, remove the directory
#   hack/demo.sh status                processes, Pods, Lease holder, resources
#   hack/demo.sh env                   `export KUBECONFIG=... PATH=...` for your shell (eval it)
#   hack/demo.sh stop-worker POD [--kill]   stop the worker process playing POD (SIGTERM, as
#                                      Ctrl+C; --kill: SIGKILL) and keep it stopped
#   hack/demo.sh start-worker POD      let the supervisor run POD's worker process again
#   hack/demo.sh run-worker POD        run POD's worker process in this terminal instead (Ctrl+C)
#   hack/demo.sh start-controller [N]  start controller replica N (default: the next free number)
#   hack/demo.sh stop-controller N [--kill]  stop controller replica N (SIGTERM releases its Lease)
#
# Environment: CRAWLER_DEMO_DIR (state, default ~/.cache/crawler-operator/demo),
# CRAWLER_DEMO_PORT_BASE (default 16400), CRAWLER_OPERATOR_BIN (use this binary instead of
# building target/debug/crawler-operator), CRAWLER_DEMO_PROFILE (debug (default) or release).
set -euo pipefail
# shellcheck source=hack/demo-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/demo-lib.sh"

NS=crawler
RELEASE=crawler-operator
WORKER_SELECTOR=app.kubernetes.io/component=crawler-worker
LEASE=$RELEASE-leader # the chart's leader-election Lease (its Role grants only that name)
SAMPLES=(douban-book-list task-test-1 task-test-2 task-test-3 xxx)
PROFILE=${CRAWLER_DEMO_PROFILE:-debug}
SITE=http://127.0.0.1:$PORT_SITE
# The demo site is on loopback, which a worker refuses to crawl unless the installation allows it
# (docs/worker.md#internal-addresses): the demo's workers allow that one address.
ALLOW_INTERNAL=127.0.0.1/32
BIN_FILE=$DEMO_DIR/bin # which crawler-operator binary this demo runs

bin() { cat "$BIN_FILE"; }
# A walk-through's pace: the workers' heartbeat is 10 s (a killed worker's tasks move 10 s
# later) and page counts reach status every 2 s. An installation's defaults are 50 s and 60 s,
# chosen for what a fleet costs the API server (docs/architecture.md#what-a-worker-costs).
DEMO_HEARTBEAT=10s
DEMO_PROGRESS=2s

# --- up -----------------------------------------------------------------------------------------

build_binary() {
  if [[ -n ${CRAWLER_OPERATOR_BIN:-} ]]; then
    [[ -x $CRAWLER_OPERATOR_BIN ]] || die "CRAWLER_OPERATOR_BIN=$CRAWLER_OPERATOR_BIN is not executable"
    say "using crawler-operator from CRAWLER_OPERATOR_BIN=$CRAWLER_OPERATOR_BIN"
    BIN=$(realpath "$CRAWLER_OPERATOR_BIN") # absolute: later commands may run from elsewhere
    return
  fi
  local flag=() dir=debug
  [[ $PROFILE == release ]] && { flag=(--release); dir=release; }
  [[ $PROFILE == release || $PROFILE == debug ]] || die "CRAWLER_DEMO_PROFILE=$PROFILE: release or debug"
  BIN=$demo_repo/target/$dir/crawler-operator
  say "building crawler-operator ($PROFILE): cargo build ${flag[*]} --locked"
  [[ -x $BIN ]] || note "first time: about 2 minutes on 2 cores (crates from crates.io); nothing when make test built it"
  local start=$SECONDS
  (cd "$demo_repo" && cargo build "${flag[@]}" --locked --bin crawler-operator) \
    || die "cargo build failed (the output above says why)"
  note "done in $((SECONDS - start))s: $BIN"
}

build_site() {
  say "building the demo web site (hack/demo-site, Go standard library only; first time ~30 s)"
  (cd "$demo_repo/hack/demo-site" && go build -o "$DEMO_DIR/demo-site" .) || die "building hack/demo-site failed"
}

install_chart() {
  say "installing the chart (charts/$RELEASE) into namespace $NS: CRD, RBAC, worker Deployment (2 replicas)"
  note "controller.replicas=0: the controller runs on this machine instead, with the chart's ServiceAccount"
  note "worker.sink=postgres: pages go to the PostgreSQL result store; its URL is in Secret crawler-db"
  "$TOOLS/helm" install "$RELEASE" "$demo_repo/charts/$RELEASE" --namespace "$NS" --create-namespace \
    --set controller.replicas=0 --set worker.replicas=2 \
    --set worker.heartbeatDuration="$DEMO_HEARTBEAT" --set worker.progressInterval="$DEMO_PROGRESS" \
    --set worker.sink=postgres --set worker.postgres.secretName=crawler-db \
    --set 'worker.networkPolicy.database.to[0].ipBlock.cidr=127.0.0.1/32' \
    --wait --timeout 2m >"$LOGS/helm-install.log" 2>&1 \
    || { cat "$LOGS/helm-install.log" >&2; die "helm install failed"; }
  kc -n "$NS" create secret generic crawler-db --from-literal=url="$PG_URL" >/dev/null
  wait_until 60 "2 worker Pods Ready" worker_pods_ready 2
  note "worker Pods: $(live_pods | paste -sd ' ')"
}

worker_pods_ready() { # N: exactly N worker Pods, all Ready
  local ready
  ready=$(kc -n "$NS" get pods -l "$WORKER_SELECTOR" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')
  [[ $(grep -c . <<<"$ready") == "$1" && $(grep -c '^True$' <<<"$ready") == "$1" ]]
}

# The two processes run as the chart's ServiceAccounts, with tokens from the TokenRequest API, so
# the demo also shows that the chart's RBAC is enough.
service_account_kubeconfigs() {
  local role token
  for role in controller worker; do
    token=$(kc -n "$NS" create token "$RELEASE-$role" --duration=8760h)
    DEMO_TOKEN=$token KUBECONFIG_NAMESPACE=$NS "$demo_repo/hack/cluster.sh" _write-kubeconfig \
      "$DEMO_DIR/kubeconfigs/$role.kubeconfig" "system:serviceaccount:$NS:$RELEASE-$role"
  done
}

# --- the result store: a PostgreSQL server on loopback (Debian's package; hack/install-tools.sh) --

PG_URL=postgres://postgres@127.0.0.1:$PORT_POSTGRES/crawler
PG_DIR_FILE=$DEMO_DIR/postgres.dir # its data lives outside $DEMO_DIR: see start_postgres

pg_bin() {
  if [[ -n ${CRAWLER_PG_BIN:-} ]]; then echo "$CRAWLER_PG_BIN"; return; fi
  compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -1 | xargs -r dirname
}

psql_demo() { "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

start_postgres() {
  "$demo_repo/hack/install-tools.sh" postgres
  local bin dir as=()
  bin=$(pg_bin)
  [[ -x $bin/postgres ]] || die "no PostgreSQL server found (hack/install-tools.sh postgres installs it)"
  # The server refuses to run as root: then it runs as the user postgres, whose data directory
  # must be reachable by it (root's home is not), so it lives in a temp dir noted in $PG_DIR_FILE.
  dir=$(mktemp -d /tmp/crawler-demo-pg.XXXXXX)
  echo "$dir" >"$PG_DIR_FILE"
  if [[ $(id -u) == 0 ]]; then
    chown postgres:postgres "$dir"
    as=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  fi
  "${as[@]}" "$bin/initdb" -A trust -U postgres -E UTF8 --no-sync -D "$dir/data" >"$LOGS/initdb.log" 2>&1 \
    || { cat "$LOGS/initdb.log" >&2; die "initdb failed"; }
  start_proc postgres "${as[@]}" "$bin/postgres" -D "$dir/data" -h 127.0.0.1 -p "$PORT_POSTGRES" -k "$dir"
  wait_until 30 "PostgreSQL on 127.0.0.1:$PORT_POSTGRES (log: $LOGS/postgres.log)" \
    psql_demo -d "postgres://postgres@127.0.0.1:$PORT_POSTGRES/postgres" -c 'SELECT 1'
  psql_demo -d "postgres://postgres@127.0.0.1:$PORT_POSTGRES/postgres" -c 'CREATE DATABASE crawler'
  note "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT_POSTGRES, database crawler (data in $dir)"
}

# The stored pages of every resource (what `make demo` ends with).
rows() {
  psql_demo -d "$PG_URL" -c "SELECT t.name AS resource, t.assignment, t.worker AS fenced_by,
         count(*) FILTER (WHERE p.state = 'visited') AS pages_stored,
         count(*) FILTER (WHERE p.state = 'queued') AS queued,
         count(DISTINCT p.assignment) FILTER (WHERE p.state = 'visited') AS writers
    FROM crawl_tasks t JOIN crawl_pages p USING (namespace, resource_uid)
   GROUP BY t.name, t.assignment, t.worker ORDER BY t.name"
  psql_demo -d "$PG_URL" -c "SELECT t.name AS resource, p.url, p.status, p.title, p.depth, p.worker, p.assignment, p.fetched_at
    FROM crawl_pages p JOIN crawl_tasks t USING (namespace, resource_uid)
   WHERE p.state = 'visited' ORDER BY p.stored_at DESC LIMIT 5"
}

start_site() {
  start_proc site "$DEMO_DIR/demo-site" -addr "127.0.0.1:$PORT_SITE" -log "$LOGS/site-requests.log"
  wait_until 10 "the demo site on $SITE (log: $LOGS/site.log)" port_in_use "$PORT_SITE"
}

start_controller() { # N
  local n=$1
  [[ $n =~ ^[1-9]$ ]] || die "controller number: 1..9"
  running "controller-$n" && die "controller-$n already runs (pid $(pid_of "controller-$n"))"
  port_in_use $((PORT_CONTROLLER0 + n)) && die "port $((PORT_CONTROLLER0 + n)) is in use"
  # The chart's controller flags, plus the Pod's identity that the downward API would give it.
  # Host affinity off: every sample crawls the one demo site, so with it (the chart's default)
  # they would all share one worker and the walk-through's moves would show nothing.
  start_proc "controller-$n" env KUBECONFIG="$DEMO_DIR/kubeconfigs/controller.kubeconfig" RUST_LOG=info \
    "$(bin)" controller --worker-selector="$WORKER_SELECTOR" --worker-port=9090 --host-affinity=false \
    --worker-heartbeat-duration="$DEMO_HEARTBEAT" --lease-name="$LEASE" --lease-namespace="$NS" --identity="controller-$n" \
    --metrics-addr="127.0.0.1:$((PORT_CONTROLLER0 + n))"
}

sample_yaml() { # name task section requestsPerSecond
  cat <<EOF
---
apiVersion: crawler.dev/v1alpha1
kind: CrawlerResource
metadata:
  name: $1
spec:
  task: $2
  seeds:
    - $SITE/$3/
  maxDepth: 5
  rateLimit:
    requestsPerSecond: $4
    burst: 1
EOF
}

write_samples() {
  {
    echo "# The original demonstration's resources (names made DNS-valid), crawling the demo site."
    sample_yaml douban-book-list douban_book_list book 2
    sample_yaml task-test-1 task_test_1 news 1
    sample_yaml task-test-2 task_test_2 docs 1
    sample_yaml task-test-3 task_test_3 forum 1
    sample_yaml xxx xxx shop 0.5
  } >"$DEMO_DIR/samples.yaml"
  # Step 4 of docs/demo.md: a short crawl (73 pages at depth 2).
  cat >"$DEMO_DIR/task-test-4.yaml" <<EOF
apiVersion: crawler.dev/v1alpha1
kind: CrawlerResource
metadata:
  name: task-test-4
spec:
  task: douban_book_list
  seeds: ["$SITE/book/"]
  maxDepth: 2
  rateLimit: {requestsPerSecond: 1}
EOF
}

# "name worker state pages" per sample resource, one per line
resource_lines() {
  kc -n "$NS" get crawlerresources -o jsonpath='{range .items[*]}{.metadata.name} {.status.assignedWorker} {.status.progress.state} {.status.progress.pagesFetched}{"\n"}{end}'
}

samples_running() { # every sample assigned, Running, pages > 0; the split is 3/2
  local lines
  lines=$(resource_lines) || return 1
  [[ $(awk '$3 == "Running" && $4 > 0' <<<"$lines" | grep -c .) == "${#SAMPLES[@]}" ]] || return 1
  [[ $(awk '{print $2}' <<<"$lines" | sort | uniq -c | awk '{print $1}' | sort | tr '\n' ' ') == "2 3 " ]]
}

total_pages() { resource_lines | awk '{s += $4} END {print s + 0}'; }

book_list_state() { kc -n "$NS" get crawlerresource book-list -o jsonpath='{.status.progress.state}'; }
book_list_completed() { [[ $(book_list_state) == Completed ]]; }

# The extraction example: examples/book-list.yaml (pointed at this demo's site) runs to
# completion, its books are printed from the result store (the `fields` column of its rows), and
# it is deleted again, so the walk-through of docs/demo.md starts from the five samples.
run_book_list() {
  say "extraction rules: applying examples/book-list.yaml (the original douban_book_list task, declared)"
  sed "s|http://127.0.0.1:16480/|$SITE/|" "$demo_repo/examples/book-list.yaml" >"$DEMO_DIR/book-list.yaml"
  kc -n "$NS" apply -f "$DEMO_DIR/book-list.yaml" | sed 's/^/    /'
  wait_until 60 "book-list to complete (kubectl describe crr book-list; logs in $LOGS)" book_list_completed
  local books incomplete uid
  uid=$(kc -n "$NS" get crawlerresource book-list -o jsonpath='{.metadata.uid}')
  # The book pages are the ones whose rule extracted fields (the list pages only follow links).
  books=$(psql_demo -d "$PG_URL" -At -c "SELECT fields FROM crawl_pages
    WHERE resource_uid = '$uid' AND state = 'visited' AND fields <> '{}'::jsonb")
  incomplete=$(kc -n "$NS" get crawlerresource book-list -o jsonpath='{.status.progress.incomplete}')
  note "book-list: $(kc -n "$NS" get crawlerresource book-list -o jsonpath='{.status.progress.pagesFetched} pages fetched, {.status.progress.incomplete} incomplete records')"
  note "$(grep -c . <<<"$books" || true) books extracted (${incomplete:-0} incomplete); the first five by author (the \"fields\" column of their rows):"
  # jsonb prints keys in its own order; print them sorted and compact, as the JSON lines carry them.
  python3 -c 'import json, sys
for line in sys.stdin:
    print("      " + json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"), ensure_ascii=False))' \
    <<<"$books" | LC_ALL=C sort | head -5
  kc -n "$NS" delete crawlerresource book-list | sed 's/^/    /'
}

up() {
  local start=$SECONDS
  if [[ -e $DEMO_MARKER ]]; then
    say "a demo is already in $DEMO_DIR: taking it down first, then starting afresh"
    "$demo_repo/hack/cluster.sh" down
  fi
  need go "Go >= 1.26 builds the cluster's tools and the demo site (docs/development.md)"
  [[ -n ${CRAWLER_OPERATOR_BIN:-} ]] || need cargo "Rust (stable) builds crawler-operator (docs/development.md)"
  need openssl "it creates the cluster's certificates"
  need python3 "it prints the books the extraction example stored"
  check_demo_ports
  trap 'echo "error: make demo did not finish; the logs are in $LOGS; make demo-down removes what it started" >&2' EXIT
  "$demo_repo/hack/cluster.sh" tools helm
  build_binary
  # cluster.sh up creates the directory; remember the binary there for the later commands.
  CRAWLER_DEMO_TOOLS_CHECKED=1 DEMO_NAMESPACE=$NS "$demo_repo/hack/cluster.sh" up
  echo "$BIN" >"$BIN_FILE"
  build_site
  start_postgres
  install_chart
  service_account_kubeconfigs

  say "starting the demo web site on $SITE, a worker supervisor and controller-1"
  start_site
  start_proc supervisor "$demo_repo/hack/demo.sh" _supervise
  wait_until 30 "a worker process per worker Pod (log: $LOGS/supervisor.log)" all_workers_running
  start_controller 1
  wait_until 30 "controller-1 to lead (log: $LOGS/controller-1.log)" leader_is controller-1
  note "worker processes: $(for p in $(live_pods); do printf '%s (metrics 127.0.0.1:%s)\n' "$p" "$(cat "$DEMO_DIR/workers/$p.port")"; done | paste -sd ' ')"

  say "applying the sample resources: ${SAMPLES[*]}"
  write_samples
  kc -n "$NS" apply -f "$DEMO_DIR/samples.yaml" | sed 's/^/    /'
  wait_until 90 "all 5 resources Running with pages fetched, split 3/2 over the workers" samples_running
  local p0 p1
  p0=$(total_pages); sleep 5; p1=$(total_pages)
  ((p1 > p0)) || die "pages fetched did not grow in 5 s ($p0 -> $p1); see $LOGS"
  note "pages fetched, all 5 tasks: $p0 -> $p1 in 5 s"
  run_book_list

  trap - EXIT
  say "demo up in $((SECONDS - start))s"
  where
  echo
  echo "\$ kubectl get crawlerresources -o wide"
  kc -n "$NS" get crawlerresources -o wide
  echo
  echo "\$ hack/demo.sh rows     # the result store: one row per URL, written only by the current owner"
  rows
}

check_demo_ports() {
  local p busy=()
  for p in "$PORT_SITE" "$PORT_POSTGRES" $((PORT_CONTROLLER0 + 1)) $((PORT_CONTROLLER0 + 2)) "$PORT_WORKER0" $((PORT_WORKER0 + 1)); do
    port_in_use "$p" && busy+=("$p")
  done
  ((${#busy[@]} == 0)) || die "port(s) ${busy[*]} on 127.0.0.1 already in use (set CRAWLER_DEMO_PORT_BASE to move them all; now $BASE)"
}

leader_is() {
  [[ $(kc -n "$NS" get lease "$LEASE" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null) == "$1" ]]
}

all_workers_running() {
  local p
  for p in $(live_pods); do running "worker-$p" || return 1; done
}

where() {
  cat <<EOF

Where things are
  state, logs, pid files   $DEMO_DIR  (logs/, pids/)
  kubeconfig (admin)       $DEMO_DIR/kubeconfig  (namespace $NS by default)
  kube-apiserver           https://127.0.0.1:$PORT_APISERVER
  demo web site            $SITE/  (requests: $LOGS/site-requests.log)
  controller-1             log $LOGS/controller-1.log, metrics http://127.0.0.1:$((PORT_CONTROLLER0 + 1))/metrics
  worker processes         log $LOGS/worker-<pod>.log, pages in PostgreSQL (below)
  result store             $PG_URL  (log $LOGS/postgres.log; hack/demo.sh rows)
  supervisor               log $LOGS/supervisor.log (one worker process per worker Pod)

Use kubectl (built into $TOOLS):
  export KUBECONFIG=$DEMO_DIR/kubeconfig PATH=$TOOLS:\$PATH
  kubectl get crawlerresources -o wide      # or: kubectl get crr -o wide -w

The walk-through (stop a worker, change the leader, add and delete a resource): docs/demo.md.
Stop everything: make demo-down
EOF
}

# --- the worker supervisor: one worker process per existing worker Pod (the kubelet's part) -----

live_pods() { # worker Pods that exist and are not being deleted, one name per line
  kc -n "$NS" get pods -l "$WORKER_SELECTOR" \
    -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{"\n"}{end}' \
    | awk 'NF == 1 {print $1}'
}

log_sup() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*"; }

free_worker_port() {
  local i used
  used=" $(cat "$DEMO_DIR"/workers/*.port 2>/dev/null | tr '\n' ' ') "
  for ((i = 0; i < 100; i++)); do
    [[ $used == *" $((PORT_WORKER0 + i)) "* ]] || port_in_use $((PORT_WORKER0 + i)) || { echo $((PORT_WORKER0 + i)); return; }
  done
  return 1
}

start_worker_process() { # POD
  local pod=$1 port
  port=$(cat "$DEMO_DIR/workers/$pod.port" 2>/dev/null) || port=$(free_worker_port) || { log_sup "no free port for $pod"; return; }
  echo "$port" >"$DEMO_DIR/workers/$pod.port"
  # As the kubelet would: the chart's CRAWLER_DATABASE_URL comes from Secret crawler-db.
  local url
  url=$(kc -n "$NS" get secret crawler-db -o jsonpath='{.data.url}' | base64 -d) || { log_sup "cannot read Secret crawler-db"; return; }
  start_proc "worker-$pod" env KUBECONFIG="$DEMO_DIR/kubeconfigs/worker.kubeconfig" RUST_LOG=info \
    CRAWLER_DATABASE_URL="$url" \
    "$(bin)" worker --pod-name="$pod" --namespace="$NS" --sink=postgres \
    --heartbeat-duration="$DEMO_HEARTBEAT" --progress-interval="$DEMO_PROGRESS" \
    --metrics-addr="127.0.0.1:$port" --allow-internal-cidrs="$ALLOW_INTERNAL"
  STARTED[$pod]=$SECONDS
  log_sup "started the worker process for Pod $pod (pid $(cat "$PIDS/worker-$pod.pid"), metrics 127.0.0.1:$port)"
}

supervise() {
  set +e # keep supervising whatever one command says
  mkdir -p "$DEMO_DIR/workers" "$DEMO_DIR/output"
  declare -gA STARTED=()
  local live=() pod name out next_list=0
  WATCH_CHILD=
  trap 'log_sup "supervisor stopping"; [[ -n $WATCH_CHILD ]] && kill "$WATCH_CHILD" 2>/dev/null; exit 0' TERM INT
  log_sup "supervisor up: one worker process per worker Pod ($WORKER_SELECTOR in $NS)"
  while true; do
    # A watch tells us when Pods change; between events, check the processes every 2 s and list
    # the Pods every 30 s anyway (cheap insurance against a missed event).
    coproc WATCH { exec "$KUBECTL" -n "$NS" get pods -l "$WORKER_SELECTOR" --watch-only -o name 2>/dev/null; }
    # shellcheck disable=SC2153 # WATCH_PID is set by coproc
    WATCH_CHILD=$WATCH_PID
    next_list=0
    while true; do
      if ((SECONDS >= next_list)); then
        # Keep the last list if the API server does not answer (never stop workers on a hiccup).
        if out=$(live_pods); then mapfile -t live < <(grep . <<<"$out"); fi
        next_list=$((SECONDS + 30))
        # Processes whose Pod is gone or terminating: stop them (SIGTERM, as the kubelet would).
        for name in $(names_like worker-); do
          pod=${name#worker-}
          if [[ " ${live[*]} " != *" $pod "* ]]; then
            log_sup "Pod $pod is gone or terminating: stopping its worker process"
            stop_procs TERM "$name"
            rm -f "$DEMO_DIR/workers/$pod.port" "$DEMO_DIR/workers/$pod.stopped"
          fi
        done
        for name in "$DEMO_DIR"/workers/*.port; do # a gone Pod whose process was stopped by hand
          [[ -e $name ]] || continue
          pod=$(basename "$name" .port)
          [[ " ${live[*]} " == *" $pod "* ]] || running "worker-$pod" \
            || rm -f "$DEMO_DIR/workers/$pod.port" "$DEMO_DIR/workers/$pod.stopped"
        done
      fi
      for pod in "${live[@]}"; do
        if [[ -e $DEMO_DIR/workers/$pod.stopped ]]; then
          # Stopped by hand (hack/demo.sh stop-worker): leave it until start-worker.
          [[ -n ${STARTED[$pod]:-} ]] && log_sup "the worker process for Pod $pod was stopped by hand: leaving it stopped"
          unset "STARTED[$pod]"
          continue
        fi
        running "worker-$pod" && continue
        # Crashed (or never started): start it, at most once every 5 s per Pod.
        if [[ -n ${STARTED[$pod]:-} ]]; then
          ((SECONDS - STARTED[$pod] >= 5)) || continue
          log_sup "the worker process for Pod $pod exited (see $LOGS/worker-$pod.log): starting it again"
        fi
        [[ -e $DEMO_DIR/workers/$pod.stopped ]] && continue # stop-worker ran just now
        start_worker_process "$pod"
      done
      if read -r -t 2 -u "${WATCH[0]}" _ 2>/dev/null; then
        next_list=0 # a Pod changed: list again now
      else
        (($? > 128)) || break # timeout: loop; EOF: the watch ended, start another
      fi
    done
    kill "$WATCH_CHILD" 2>/dev/null || true
    wait "$WATCH_CHILD" 2>/dev/null || true
    sleep 1
  done
}

# --- walk-through commands -------------------------------------------------------------------------

require_demo() {
  if [[ ! -e $DEMO_MARKER ]] || ! running kube-apiserver; then
    die "no demo running in $DEMO_DIR: run 'make demo' first"
  fi
}

stop_worker() { # POD [--kill]
  local pod=${1:-} sig=TERM
  [[ -n $pod ]] || die "usage: hack/demo.sh stop-worker POD [--kill]   (Pods: $(live_pods | tr '\n' ' '))"
  [[ ${2:-} == --kill ]] && sig=KILL
  running "worker-$pod" || die "no worker process runs for Pod $pod (Pods: $(live_pods | tr '\n' ' '))"
  touch "$DEMO_DIR/workers/$pod.stopped" # first, so the supervisor does not start it again
  stop_procs "$sig" "worker-$pod"
  say "stopped the worker process for Pod $pod (SIG$sig); it stays stopped until: hack/demo.sh start-worker $pod"
}

run_worker() { # POD: the worker process for POD in the foreground of this terminal (Ctrl+C stops it)
  local pod=${1:-}
  [[ -n $pod ]] || die "usage: hack/demo.sh run-worker POD   (Pods: $(live_pods | tr '\n' ' '))"
  live_pods | grep -qxF "$pod" || die "no worker Pod $pod (Pods: $(live_pods | tr '\n' ' '))"
  touch "$DEMO_DIR/workers/$pod.stopped" # the supervisor leaves this Pod to us
  if running "worker-$pod"; then
    # SIGKILL, not SIGTERM: a SIGTERM'd worker releases its heartbeat and its resources would move
    # away now. Killed, its heartbeat Lease stays fresh, the process below renews it at once (same
    # holder: the Pod), and the resources stay on this Pod until you press Ctrl+C.
    stop_procs KILL "worker-$pod"
    say "took Pod $pod over from the supervisor (its worker process was killed)"
  fi
  local port
  port=$(cat "$DEMO_DIR/workers/$pod.port" 2>/dev/null) || port=$(free_worker_port)
  say "running the worker process for Pod $pod here; Ctrl+C stops it (SIGINT: it stops its crawls and releases its heartbeat)"
  note "afterwards, hand the Pod back to the supervisor: hack/demo.sh start-worker $pod"
  # Tagged like the demo's other processes, so that make demo-down stops it too.
  env "$DEMO_TAG" KUBECONFIG="$DEMO_DIR/kubeconfigs/worker.kubeconfig" RUST_LOG="${RUST_LOG:-info}" \
    CRAWLER_DATABASE_URL="$(kc -n "$NS" get secret crawler-db -o jsonpath='{.data.url}' | base64 -d)" \
    "$(bin)" worker --pod-name="$pod" --namespace="$NS" --sink=postgres \
    --heartbeat-duration="$DEMO_HEARTBEAT" --progress-interval="$DEMO_PROGRESS" \
    --metrics-addr="127.0.0.1:$port" --allow-internal-cidrs="$ALLOW_INTERNAL" || true
}

start_worker() { # POD
  local pod=${1:-}
  [[ -n $pod ]] || die "usage: hack/demo.sh start-worker POD"
  live_pods | grep -qxF "$pod" || die "no worker Pod $pod (Pods: $(live_pods | tr '\n' ' '))"
  rm -f "$DEMO_DIR/workers/$pod.stopped"
  wait_until 15 "the supervisor to start the worker process for $pod (log: $LOGS/supervisor.log)" running "worker-$pod"
  say "the worker process for Pod $pod runs again (pid $(pid_of "worker-$pod"))"
}

start_controller_cmd() { # [N]
  local n=${1:-}
  if [[ -z $n ]]; then
    for ((n = 1; n <= 9; n++)); do running "controller-$n" || break; done
  fi
  start_controller "$n"
  wait_until 30 "controller-$n to be ready (log: $LOGS/controller-$n.log)" \
    bash -c "exec 3<>/dev/tcp/127.0.0.1/$((PORT_CONTROLLER0 + n)) && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && grep -q '^ok' <&3"
  say "controller-$n runs (pid $(pid_of "controller-$n"), log $LOGS/controller-$n.log, metrics http://127.0.0.1:$((PORT_CONTROLLER0 + n))/metrics)"
  note "the Lease $NS/$LEASE is held by: $(kc -n "$NS" get lease "$LEASE" -o jsonpath='{.spec.holderIdentity}')"
}

stop_controller() { # N [--kill]
  local n=${1:-} sig=TERM
  [[ -n $n ]] || die "usage: hack/demo.sh stop-controller N [--kill]"
  [[ ${2:-} == --kill ]] && sig=KILL
  running "controller-$n" || die "controller-$n does not run"
  stop_procs "$sig" "controller-$n"
  say "stopped controller-$n (SIG$sig)"
}

status() {
  "$demo_repo/hack/cluster.sh" status || return 1
  running kube-apiserver || return 0
  echo
  local f
  for f in "$DEMO_DIR"/workers/*.port; do
    [[ -e $f ]] && echo "worker process for Pod $(basename "$f" .port): metrics http://127.0.0.1:$(cat "$f")/metrics"
  done
  echo "Lease $NS/$LEASE held by: $(kc -n "$NS" get lease "$LEASE" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null)"
  kc -n "$NS" get crawlerresources -o wide
}

case ${1:-} in
  up) up ;;
  down)
    pg_dir=$(cat "$PG_DIR_FILE" 2>/dev/null || true)
    "$demo_repo/hack/cluster.sh" down
    [[ $pg_dir == /tmp/crawler-demo-pg.* ]] && rm -rf "$pg_dir"
    ;;
  rows) require_demo; rows ;;
  status) status ;;
  env) "$demo_repo/hack/cluster.sh" env ;;
  stop-worker) require_demo; shift; stop_worker "$@" ;;
  start-worker) require_demo; shift; start_worker "$@" ;;
  run-worker) require_demo; shift; run_worker "$@" ;;
  start-controller) require_demo; shift; start_controller_cmd "$@" ;;
  stop-controller) require_demo; shift; stop_controller "$@" ;;
  _supervise) supervise ;;
  *) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 2 ;;
esac
