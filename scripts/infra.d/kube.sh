# shellcheck shell=bash
# A real Kubernetes control plane on 127.0.0.1, run the way controller-runtime's envtest runs it:
# etcd (2379, peer 2380) + kube-apiserver (https://127.0.0.1:6443), no controllers, no nodes.
#
# The binaries (kube-apiserver, kubectl, etcd) are compiled from the Go module proxy through the
# wrapper module scripts/go/kube (see its go.mod for why it exists and how to bump the version);
# the Kubernetes version is the one pinned there.
#
# Authentication: client certificates. The kubeconfig uses user "admin" in group
# "system:masters"; tests can issue further certificates from the CA in cache/kube/pki
# (ca.crt/ca.key) to act as least-privilege users. Authorization is RBAC, as in a real cluster.
# etcd data is kept across down/up (tests use random namespaces).

# shellcheck source=../go/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../go/lib.sh"

KUBE_API_PORT=6443
KUBE_ETCD_PORT=2379
KUBE_ETCD_PEER_PORT=2380
KUBE_GO_MOD=$GO_INFRA_DIR/kube
KUBE_PKI=$UMP_INFRA_CACHE/kube/pki
KUBE_KUBECONFIG=$UMP_INFRA_RUN/kube/kubeconfig

# The pin lives in go.mod only, so the wrapper module and the reported version cannot disagree.
kube__version() { awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$KUBE_GO_MOD/go.mod"; }

kube__curl() {
  curl -fsS --max-time 5 --cacert "$KUBE_PKI/ca.crt" --cert "$KUBE_PKI/admin.crt" \
    --key "$KUBE_PKI/admin.key" "https://127.0.0.1:$KUBE_API_PORT$1"
}

# kube__ldflags: what `make` in kubernetes stamps in (hack/lib/version.sh); without it the
# apiserver reports v0.0.0-master and clients that check the server version misbehave.
kube__ldflags() {
  local version=$1 major minor pkg ldflags="-s -w"
  major=${version#v}; major=${major%%.*}
  minor=${version#v*.}; minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  echo "$ldflags"
}

# kube__build_id: identifies a build; it changes with the pin, go.mod/go.sum and the flags.
kube__build_id() {
  local version
  version=$(kube__version)
  echo "$version $(cat "$KUBE_GO_MOD/go.mod" "$KUBE_GO_MOD/go.sum" | sha256sum | cut -c1-16) $(kube__ldflags "$version")"
}

kube__built() {
  [ -x "$UMP_INFRA_BIN/kube-apiserver" ] && [ -x "$UMP_INFRA_BIN/kubectl" ] && [ -x "$UMP_INFRA_BIN/etcd" ] &&
    [ "$(cat "$UMP_INFRA_BIN/.kube.stamp" 2>/dev/null || true)" = "$(kube__build_id)" ]
}

kube__build() {
  local version tmp start=$SECONDS
  kube__built && return 0
  version=$(kube__version)
  [ -n "$version" ] || die "kube: no k8s.io/kubernetes requirement in $KUBE_GO_MOD/go.mod"
  log "kube: building kube-apiserver, kubectl and etcd $version from the Go module proxy (first run only: ~6 min on 2 cores)"
  tmp=$(mktemp -d "$UMP_INFRA_CACHE/kube-build.XXXXXX")
  # One `go build` for the three `tool` packages of the wrapper module: they share most packages,
  # and a single invocation keeps both cores busy.
  if ! (cd "$KUBE_GO_MOD" && go__cmd build -trimpath -ldflags "$(kube__ldflags "$version")" -o "$tmp/" tool); then
    rm -rf "$tmp"
    die "kube: building the control plane failed (module: $KUBE_GO_MOD)"
  fi
  # etcd's main package is the module root go.etcd.io/etcd/server/v3, so go names it "server".
  mv -f "$tmp/server" "$UMP_INFRA_BIN/etcd"
  mv -f "$tmp/kube-apiserver" "$tmp/kubectl" "$UMP_INFRA_BIN/"
  rm -rf "$tmp"
  kube__build_id >"$UMP_INFRA_BIN/.kube.stamp"
  log "kube: built in $((SECONDS - start))s"
}

kube__pki() {
  command -v curl >/dev/null 2>&1 || apt_install curl
  tls__ca "$KUBE_PKI" "ump-infra kube CA"
  # The SANs a client may use for the apiserver, in-cluster names included (10.0.0.1 is the
  # "kubernetes" service IP of the 10.0.0.0/24 range).
  tls__cert "$KUBE_PKI" apiserver "/CN=kube-apiserver" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth"
  tls__cert "$KUBE_PKI" admin "/O=system:masters/CN=admin" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth"
  if [ ! -s "$KUBE_PKI/sa.key" ]; then
    # RSA, as in kubeadm clusters: service account tokens come out RS256 like everywhere else.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KUBE_PKI/sa.key.tmp" 2>/dev/null ||
      die "openssl: cannot create $KUBE_PKI/sa.key"
    chmod 600 "$KUBE_PKI/sa.key.tmp"
    mv -f "$KUBE_PKI/sa.key.tmp" "$KUBE_PKI/sa.key"
  fi
}

# kube__wait_etcd: 0 once etcd reports healthy, 1 if it dies or stays unhealthy for 60 s.
kube__wait_etcd() {
  local i
  for ((i = 0; i < 300; i++)); do
    curl -fsS --max-time 2 "http://127.0.0.1:$KUBE_ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"' && return 0
    pid_alive kube-etcd || return 1
    sleep 0.2
  done
  return 1
}

kube__start_etcd() {
  local dir
  dir=$(run_dir kube-etcd)
  ensure_port_free kube-etcd "$KUBE_ETCD_PORT"
  ensure_port_free kube-etcd "$KUBE_ETCD_PEER_PORT"
  # --unsafe-no-fsync as in envtest: much faster on CI disks; the price is that a killed etcd may
  # leave a data dir it refuses to load, handled below by starting over.
  local args=(
    "$UMP_INFRA_BIN/etcd" --name=ump --data-dir="$dir/data"
    --listen-client-urls="http://127.0.0.1:$KUBE_ETCD_PORT"
    --advertise-client-urls="http://127.0.0.1:$KUBE_ETCD_PORT"
    --listen-peer-urls="http://127.0.0.1:$KUBE_ETCD_PEER_PORT"
    --initial-advertise-peer-urls="http://127.0.0.1:$KUBE_ETCD_PEER_PORT"
    --initial-cluster="ump=http://127.0.0.1:$KUBE_ETCD_PEER_PORT"
    --unsafe-no-fsync --log-level=warn
  )
  start_daemon kube-etcd "--data-dir=$dir/data" "${args[@]}"
  kube__wait_etcd && return 0
  tail -n 20 "$dir/log" >&2 || true
  log "kube: etcd did not come up on its previous data (unclean shutdown?); starting with an empty data dir"
  stop_daemon kube-etcd
  mv -f "$dir/log" "$dir/log.failed" 2>/dev/null || true
  rm -rf "$dir/data"
  start_daemon kube-etcd "--data-dir=$dir/data" "${args[@]}"
  kube__wait_etcd || { tail -n 40 "$dir/log" >&2; die "kube: etcd does not start (log: $dir/log)"; }
}

kube__start_apiserver() {
  local dir
  dir=$(run_dir kube-apiserver)
  ensure_port_free kube-apiserver "$KUBE_API_PORT"
  # Flags follow envtest. --disable-admission-plugins=ServiceAccount: no token controller runs, so
  # pods would otherwise wait forever for their token. --endpoint-reconciler-type=none: with the
  # reconciler on, kube-apiserver refuses to start with a loopback --advertise-address (it would
  # publish it as the "kubernetes" service endpoint); nothing here routes to that service anyway.
  start_daemon kube-apiserver "$UMP_INFRA_BIN/kube-apiserver" \
    "$UMP_INFRA_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$KUBE_ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$KUBE_API_PORT" \
    --cert-dir="$dir/certs" \
    --tls-cert-file="$KUBE_PKI/apiserver.crt" --tls-private-key-file="$KUBE_PKI/apiserver.key" \
    --client-ca-file="$KUBE_PKI/ca.crt" \
    --service-account-issuer="https://127.0.0.1:$KUBE_API_PORT" \
    --service-account-key-file="$KUBE_PKI/sa.key" \
    --service-account-signing-key-file="$KUBE_PKI/sa.key" \
    --authorization-mode=RBAC \
    --service-cluster-ip-range=10.0.0.0/24 \
    --disable-admission-plugins=ServiceAccount \
    --endpoint-reconciler-type=none \
    --allow-privileged=true \
    --profiling=false
}

# kube__wait_ready: until /readyz says ok (all post-start hooks done: RBAC bootstrap roles,
# system namespaces, priority-and-fairness config, ...): about 3 s here, more on a busy machine.
kube__wait_ready() {
  local i dir=$UMP_INFRA_RUN/kube-apiserver
  for ((i = 0; i < 900; i++)); do
    [ "$(kube__curl /readyz 2>/dev/null || true)" = "ok" ] && return 0
    if ! pid_alive kube-apiserver; then
      tail -n 40 "$dir/log" >&2 || true
      die "kube-apiserver exited during startup (log: $dir/log)"
    fi
    sleep 0.2
  done
  tail -n 40 "$dir/log" >&2 || true
  die "kube-apiserver: /readyz not ok after 180 s (log: $dir/log)"
}

kube__write_kubeconfig() {
  local tmp
  run_dir kube >/dev/null
  tmp=$KUBE_KUBECONFIG.tmp.$$
  (
    umask 077
    cat >"$tmp" <<EOF
# written by scripts/infra.d/kube.sh
apiVersion: v1
kind: Config
clusters:
- name: ump
  cluster:
    server: https://127.0.0.1:$KUBE_API_PORT
    certificate-authority-data: $(base64 -w0 "$KUBE_PKI/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 "$KUBE_PKI/admin.crt")
    client-key-data: $(base64 -w0 "$KUBE_PKI/admin.key")
contexts:
- name: ump
  context:
    cluster: ump
    user: admin
    namespace: default
current-context: ump
EOF
  )
  mv -f "$tmp" "$KUBE_KUBECONFIG"
}

# kube__stop_apiserver: a graceful stop waits for etcd, which is pointless (and takes until
# stop_daemon's 30 s KILL) when etcd is already gone; nothing is lost by killing it then.
kube__stop_apiserver() {
  if pid_alive kube-apiserver && ! pid_alive kube-etcd; then
    kill -KILL "$(cat "$UMP_INFRA_RUN/kube-apiserver/pid")" 2>/dev/null || true
  fi
  stop_daemon kube-apiserver
}

kube_up() {
  if kube_status; then
    kube__built && return 0
    log "kube: the pinned build changed since the running control plane was started; restarting"
    kube_down
  fi
  kube__build
  kube__pki
  if ! pid_alive kube-etcd; then
    # An apiserver whose etcd went away is stale (and may hold a broken watch cache): restart both.
    kube__stop_apiserver
    kube__start_etcd
  fi
  pid_alive kube-apiserver || kube__start_apiserver
  kube__wait_ready
  kube__write_kubeconfig
  # Through the built kubectl and the written kubeconfig, i.e. exactly what the tests will use.
  [ "$("$UMP_INFRA_BIN/kubectl" --kubeconfig "$KUBE_KUBECONFIG" get --raw /readyz)" = "ok" ] ||
    die "kube: kubectl get --raw /readyz is not ok"
  "$UMP_INFRA_BIN/kubectl" --kubeconfig "$KUBE_KUBECONFIG" get namespace default -o name >/dev/null ||
    die "kube: kubectl cannot read namespaces"
}

kube_down() {
  kube__stop_apiserver
  stop_daemon kube-etcd
}

kube_status() {
  pid_alive kube-etcd && pid_alive kube-apiserver && [ -s "$KUBE_KUBECONFIG" ] &&
    [ "$(kube__curl /readyz 2>/dev/null || true)" = "ok" ]
}

kube_env() {
  echo "UMP_KUBECONFIG=$KUBE_KUBECONFIG"
  echo "UMP_KUBECTL=$UMP_INFRA_BIN/kubectl"
  echo "UMP_KUBE_VERSION=$(kube__version)"
}
