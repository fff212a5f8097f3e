#!/usr/bin/env bash
# A local Kubernetes cluster on loopback, from the pinned sources, without a container engine:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and kwok (Kubernetes WithOut
# Kubelet), which gives Pods a simulated node, an IP and readiness. Deployments, ReplicaSets,
# scheduling, `kubectl scale` and `kubectl delete pod` behave as in a real cluster; no container
# ever runs.
#
#   hack/cluster.sh up       build what is missing, start the cluster, wait until a node is Ready
#   hack/cluster.sh down     stop every process the demo started and remove its directory
#   hack/cluster.sh status   which processes run, the node and the Pods
#   hack/cluster.sh env      print `export KUBECONFIG=... PATH=...` for a shell (eval it)
#
# State (certificates, kubeconfigs, etcd data, logs, pid files) lives in $CRAWLER_DEMO_DIR
# (default ~/.cache/crawler-operator/demo). Ports: $CRAWLER_DEMO_PORT_BASE (default 16400) +1 etcd,
# +2 etcd peer, +43 kube-apiserver, +47 kwok, +57 kube-controller-manager, +59 kube-scheduler.
# Everything binds to 127.0.0.1. hack/demo.sh builds the crawler demo on top of this.
set -euo pipefail
# shellcheck source=hack/demo-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/demo-lib.sh"
# shellcheck source=hack/versions.env
source "$demo_repo/hack/versions.env"

CLUSTER_TOOLS=(etcd kube-apiserver kubectl kube-controller-manager kube-scheduler kwok)
CLUSTER_PROCS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
NODE=kwok-node-1

install_tools() {
  local missing=() t all=("${CLUSTER_TOOLS[@]}" "$@")
  [[ -z ${CRAWLER_DEMO_TOOLS_CHECKED:-} ]] || return 0 # hack/demo.sh did it a moment ago
  for t in "${all[@]}"; do [[ -x $TOOLS/$t ]] || missing+=("$t"); done
  if ((${#missing[@]} == 0)); then
    say "tools: ${all[*]} cached in $TOOLS"
    return
  fi
  say "building ${missing[*]} from the Go module proxy into $TOOLS"
  note "first time on a fresh machine: about 12 minutes on 2 cores (one binary for all but kwok),"
  note "plus a few GB of Go module and build cache; cached afterwards, later runs skip this step"
  "$demo_repo/hack/install-tools.sh" "${CLUSTER_TOOLS[@]}" "$@" 2>&1 | grep --line-buffered -v ' cached at ' | sed -u 's/^/    /'
}

# --- certificates: all X.509 v3 (rustls refuses v1), one CA, RSA 2048 -------------------------
gen_pki() {
  mkdir -p "$PKI"
  cat >"$PKI/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF
  local ossl=(openssl)
  "${ossl[@]}" req -x509 -new -newkey rsa:2048 -nodes -days 3650 -subj "/CN=crawler-demo-ca" \
    -config "$PKI/openssl.cnf" -extensions ca -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  leaf server kube-apiserver "/CN=kube-apiserver"
  # Every component in system:masters: the controller-manager runs all controllers under its own
  # identity (--use-service-account-credentials=false), which the bootstrap roles do not cover.
  leaf client admin "/O=system:masters/CN=crawler-demo-admin"
  leaf client kube-controller-manager "/O=system:masters/CN=system:kube-controller-manager"
  leaf client kube-scheduler "/O=system:masters/CN=system:kube-scheduler"
  leaf client kwok "/O=system:masters/CN=kwok-controller"
  # ServiceAccount token signing key (kube-apiserver verifies, controller-manager and the
  # TokenRequest API sign).
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
}

leaf() { # kind (server|client), name, subject
  openssl req -new -newkey rsa:2048 -nodes -subj "$3" -config "$PKI/openssl.cnf" \
    -keyout "$PKI/$2.key" -out "$PKI/$2.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$2.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -set_serial "0x$(openssl rand -hex 12)" -days 3650 -extfile "$PKI/openssl.cnf" -extensions "$1" \
    -out "$PKI/$2.crt" 2>/dev/null
  rm -f "$PKI/$2.csr"
}

# kubeconfig FILE USER (client cert) | kubeconfig FILE USER token TOKEN; namespace "default"
# unless $KUBECONFIG_NAMESPACE says otherwise.
write_kubeconfig() {
  local file=$1 user=$2 auth
  if [[ ${3:-} == token ]]; then
    auth="    token: $4"
  else
    auth="    client-certificate: $PKI/$user.crt
    client-key: $PKI/$user.key"
  fi
  (umask 077; cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: crawler-demo
  cluster:
    server: https://127.0.0.1:$PORT_APISERVER
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
$auth
contexts:
- name: crawler-demo
  context:
    cluster: crawler-demo
    user: $user
    namespace: ${KUBECONFIG_NAMESPACE:-default}
current-context: crawler-demo
EOF
  )
}

check_ports() {
  local p busy=()
  for p in "$@"; do port_in_use "$p" && busy+=("$p"); done
  ((${#busy[@]} == 0)) || die "port(s) ${busy[*]} on 127.0.0.1 already in use (another demo, or set CRAWLER_DEMO_PORT_BASE to move them all; now $BASE)"
}

# The stages kwok's module ships, as kwokctl uses them: kwok refuses to start without stages, and
# without node leases (node-heartbeat-with-lease + --node-lease-duration-seconds) the
# controller-manager marks the node NotReady after its 50 s grace period, and every Pod on it
# NotReady for good.
kwok_stages() {
  local mod
  mod="$(go env GOMODCACHE)/sigs.k8s.io/kwok@v$KWOK_VERSION"
  if [[ ! -d $mod/kustomize/stage ]]; then
    (cd "$TOOLS" && go mod download "sigs.k8s.io/kwok@v$KWOK_VERSION") >/dev/null
  fi
  mkdir -p "$DEMO_DIR/kwok"
  cp "$mod"/kustomize/stage/node/fast/node-*.yaml "$mod"/kustomize/stage/node/heartbeat-with-lease/node-*.yaml \
    "$mod"/kustomize/stage/pod/fast/pod-*.yaml "$DEMO_DIR/kwok/"
  chmod u+w "$DEMO_DIR"/kwok/*.yaml
}

up() {
  if [[ -e $DEMO_MARKER ]] && running kube-apiserver; then
    say "the cluster in $DEMO_DIR is already up"
    return 0
  fi
  [[ -e $DEMO_MARKER ]] && down
  need openssl "it creates the cluster's certificates"
  need setsid "it starts the cluster's processes in their own session (util-linux)"
  install_tools
  check_ports "$PORT_ETCD" "$PORT_ETCD_PEER" "$PORT_APISERVER" "$PORT_KWOK" "$PORT_KCM" "$PORT_SCHEDULER"
  [[ -e $DEMO_DIR && -n $(ls -A "$DEMO_DIR" 2>/dev/null) ]] \
    && die "$DEMO_DIR exists and is not a demo directory; set CRAWLER_DEMO_DIR to an empty or new one"
  mkdir -p "$DEMO_DIR" "$PIDS" "$LOGS"
  touch "$DEMO_MARKER"
  local start=$SECONDS

  say "starting the local cluster in $DEMO_DIR (logs: $LOGS)"
  gen_pki
  mkdir -p "$DEMO_DIR/kubeconfigs"
  KUBECONFIG_NAMESPACE=${DEMO_NAMESPACE:-default} write_kubeconfig "$DEMO_DIR/kubeconfig" admin
  local c
  for c in kube-controller-manager kube-scheduler kwok; do
    write_kubeconfig "$DEMO_DIR/kubeconfigs/$c.kubeconfig" "$c"
  done

  start_proc etcd "$TOOLS/etcd" --name=crawler-demo --data-dir="$DEMO_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$PORT_ETCD" --advertise-client-urls="http://127.0.0.1:$PORT_ETCD" \
    --listen-peer-urls="http://127.0.0.1:$PORT_ETCD_PEER" --initial-advertise-peer-urls="http://127.0.0.1:$PORT_ETCD_PEER" \
    --initial-cluster="crawler-demo=http://127.0.0.1:$PORT_ETCD_PEER" \
    --log-level=warn --unsafe-no-fsync
  wait_until 30 "etcd on 127.0.0.1:$PORT_ETCD (log: $LOGS/etcd.log)" port_in_use "$PORT_ETCD"

  start_proc kube-apiserver "$TOOLS/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$PORT_ETCD" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$PORT_APISERVER" \
    --endpoint-reconciler-type=none \
    --tls-cert-file="$PKI/kube-apiserver.crt" --tls-private-key-file="$PKI/kube-apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --allow-privileged=true --profiling=false
  wait_until 60 "kube-apiserver /readyz on 127.0.0.1:$PORT_APISERVER (log: $LOGS/kube-apiserver.log)" \
    kc get --raw=/readyz
  note "kube-apiserver ready on https://127.0.0.1:$PORT_APISERVER ($((SECONDS - start))s)"

  start_proc kube-controller-manager "$TOOLS/kube-controller-manager" \
    --kubeconfig="$DEMO_DIR/kubeconfigs/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$DEMO_DIR/kubeconfigs/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$DEMO_DIR/kubeconfigs/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$PORT_KCM" --leader-elect=false \
    --controllers='*' --use-service-account-credentials=false \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --cluster-name=crawler-demo --allocate-node-cidrs=false --profiling=false
  start_proc kube-scheduler "$TOOLS/kube-scheduler" \
    --kubeconfig="$DEMO_DIR/kubeconfigs/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$DEMO_DIR/kubeconfigs/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$DEMO_DIR/kubeconfigs/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$PORT_SCHEDULER" --leader-elect=false --profiling=false
  kwok_stages
  local stages=() f
  for f in "$DEMO_DIR"/kwok/*.yaml; do stages+=(-c "$f"); done
  start_proc kwok "$TOOLS/kwok" --kubeconfig="$DEMO_DIR/kubeconfigs/kwok.kubeconfig" "${stages[@]}" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 --cidr=10.244.0.0/24 --node-ip=127.0.0.1 \
    --server-address="127.0.0.1:$PORT_KWOK"

  # A simulated node (kwok plays its kubelet: Ready, node lease, Pod status and IPs).
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $NODE
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: $NODE
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
EOF
  wait_until 60 "node $NODE Ready (logs: $LOGS/kwok.log, kube-controller-manager.log)" \
    kc wait --for=condition=Ready "node/$NODE" --timeout=2s
  # The controller-manager creates the "default" ServiceAccount of each namespace.
  wait_until 60 "the default ServiceAccount (log: $LOGS/kube-controller-manager.log)" \
    kc -n default get serviceaccount default
  for c in "${CLUSTER_PROCS[@]}"; do
    running "$c" || die "$c exited; see $LOGS/$c.log"
  done
  say "cluster up in $((SECONDS - start))s: kube-apiserver https://127.0.0.1:$PORT_APISERVER, node $NODE Ready"
}

# Stops everything in $DEMO_DIR/pids: the demo's processes first (so workers can still release
# their heartbeats), the cluster last; then removes the directory.
down() {
  if [[ ! -e $DEMO_MARKER ]]; then
    [[ -e $DEMO_DIR ]] && die "$DEMO_DIR is not a demo directory (no ${DEMO_MARKER##*/}): not touching it"
    say "nothing to take down ($DEMO_DIR does not exist)"
    return 0
  fi
  say "stopping the demo in $DEMO_DIR"
  local n
  mapfile -t n < <(names_like supervisor)
  ((${#n[@]} == 0)) || stop_procs TERM "${n[@]}"
  mapfile -t n < <(names_like worker-; names_like controller-; names_like site)
  ((${#n[@]} == 0)) || stop_procs TERM "${n[@]}"
  # The API server before etcd (it drains against etcd), its clients before it.
  stop_procs TERM kwok kube-scheduler kube-controller-manager
  stop_procs TERM kube-apiserver
  stop_procs TERM etcd
  mapfile -t n < <(names_like "")
  ((${#n[@]} == 0)) || stop_procs TERM "${n[@]}"
  stop_strays
  rm -rf "$DEMO_DIR"
  say "removed $DEMO_DIR"
}

status() {
  [[ -e $DEMO_MARKER ]] || { echo "no demo in $DEMO_DIR"; return 1; }
  local n
  for n in $(names_like ""); do
    if running "$n"; then printf '  %-34s running (pid %s)\n' "$n" "$(pid_of "$n")"
    else printf '  %-34s NOT RUNNING (log: %s)\n' "$n" "$LOGS/$n.log"; fi
  done
  running kube-apiserver && kc get nodes,pods -A -o wide 2>&1 | sed 's/^/  /'
}

env_lines() {
  echo "export KUBECONFIG=$DEMO_DIR/kubeconfig"
  echo "export PATH=$TOOLS:\$PATH"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  tools) shift; install_tools "$@" ;;
  _write-kubeconfig) write_kubeconfig "$2" "$3" token "$DEMO_TOKEN" ;; # for hack/demo.sh: FILE USER
  *) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 2 ;;
esac
