#!/usr/bin/env bash
# A real Kubernetes API server for the tests: kube-apiserver and etcd, built from Go modules
# (once, cached by version) and run on 127.0.0.1. No controller-manager, scheduler or kubelet:
# tests create ServiceAccounts and Pods themselves (Pods stay Pending, which is enough for a
# pod-bound TokenRequest and a TokenReview).
#
# Sourced by scripts/test.sh after scripts/peers.sh (it uses peers_on_exit and _peers_free_port):
#   peers_kube_install     builds kube-apiserver $BAOFS_KUBE_VERSION and etcd $BAOFS_ETCD_VERSION
#                          into $BAOFS_CACHE/peers/bin/ (skipped when present). Needs Go ≥ 1.26
#                          (GOTOOLCHAIN=auto fetches a newer one through the Go module proxy).
#                          Cold build: about 10-20 min and 2-4 GB of RAM on 2 cores.
#   peers_kube_start DIR   etcd on free loopback ports, kube-apiserver on 127.0.0.1 with generated
#                          service-account signing keys, a serving certificate (IP SAN
#                          127.0.0.1), an admin token in system:masters (--token-auth-file),
#                          --api-audiences=https://127.0.0.1:<port>,openbao and RBAC; waits for
#                          /readyz, applies deploy/crds/*.yaml and waits until they are served.
#                          Exports BAOFS_TEST_KUBECONFIG (admin token + CA) and
#                          BAOFS_TEST_KUBE_ADDR. Both processes are killed on exit.
#   peers_kube_stop        kills both (by pid).
#
# Run directly: `scripts/peers-kube.sh install` builds; `scripts/peers-kube.sh env` starts one
# and waits for ^C.

BAOFS_KUBE_VERSION="${BAOFS_KUBE_VERSION:-1.37.2}"
BAOFS_ETCD_VERSION="${BAOFS_ETCD_VERSION:-3.6.16}"
BAOFS_CACHE="${BAOFS_CACHE:-${HOME:-/root}/.cache/baofs}"

_kube_log() { echo "peers-kube: $*" >&2; }

_kube_bin_dir() { echo "$BAOFS_CACHE/peers/bin"; }
_kube_apiserver_bin() { echo "$(_kube_bin_dir)/kube-apiserver-v$BAOFS_KUBE_VERSION"; }
_kube_etcd_bin() { echo "$(_kube_bin_dir)/etcd-v$BAOFS_ETCD_VERSION"; }

_kube_go() {
    if command -v go >/dev/null 2>&1; then
        command -v go
        return 0
    fi
    local g
    for g in /usr/local/go/bin/go /usr/lib/go/bin/go; do
        [[ -x "$g" ]] && { echo "$g"; return 0; }
    done
    return 1
}

# _kube_build_apiserver GO: the wrapper module that replaces every k8s.io staging module
# (required at v0.0.0 by k8s.io/kubernetes) with its published v0.<minor>.<patch> release.
_kube_build_apiserver() {
    local go="$1" k="$BAOFS_KUBE_VERSION" minor s dir out gomod m
    minor=$(cut -d. -f2 <<<"$k")
    s="v0.${k#*.}"
    dir="$BAOFS_CACHE/peers/kube-build/kube-$k"
    out=$(_kube_apiserver_bin)
    mkdir -p "$dir" "$(dirname "$out")" || return 1
    (
        set -euo pipefail
        cd "$dir"
        [[ -f go.mod ]] || "$go" mod init local/kubepeer
        gomod=$("$go" mod download -json "k8s.io/kubernetes@v$k" |
            python3 -c 'import sys,json;print(json.load(sys.stdin)["GoMod"])')
        for m in $(awk '$1 ~ /^k8s\.io\// && $2=="v0.0.0" {print $1}' "$gomod"); do
            "$go" mod edit -replace="$m=$m@$s"
        done
        "$go" get -tool "k8s.io/kubernetes/cmd/kube-apiserver@v$k"
        "$go" mod tidy
        "$go" build -trimpath -ldflags "-X k8s.io/component-base/version.gitVersion=v$k \
            -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" \
            -o "$out.tmp" k8s.io/kubernetes/cmd/kube-apiserver
        mv "$out.tmp" "$out"
    )
}

# _kube_build_etcd GO: etcd in its own wrapper module (its go.mod has replaces, so MVS must
# not move the apiserver's etcd client).
_kube_build_etcd() {
    local go="$1" v="$BAOFS_ETCD_VERSION" dir out
    dir="$BAOFS_CACHE/peers/kube-build/etcd-$v"
    out=$(_kube_etcd_bin)
    mkdir -p "$dir" "$(dirname "$out")" || return 1
    (
        set -euo pipefail
        cd "$dir"
        [[ -f go.mod ]] || "$go" mod init local/etcdpeer
        "$go" get -tool "go.etcd.io/etcd/server/v3@v$v"
        "$go" build -trimpath -o "$out.tmp" go.etcd.io/etcd/server/v3
        mv "$out.tmp" "$out"
    )
}

peers_kube_install() {
    local api etcd go log
    api=$(_kube_apiserver_bin)
    etcd=$(_kube_etcd_bin)
    if [[ -x "$api" && -x "$etcd" ]]; then
        return 0
    fi
    go=$(_kube_go) || {
        _kube_log "Go is needed to build kube-apiserver and etcd (install Go >= 1.26)"
        return 1
    }
    command -v python3 >/dev/null 2>&1 || { _kube_log "python3 is needed"; return 1; }
    log="$BAOFS_CACHE/peers/kube-build/build.log"
    mkdir -p "$(dirname "$log")"
    export GOFLAGS="${GOFLAGS:--mod=mod}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
    if [[ ! -x "$api" ]]; then
        _kube_log "building kube-apiserver v$BAOFS_KUBE_VERSION from Go modules (once; 10-20 min cold; log $log)"
        if ! _kube_build_apiserver "$go" >>"$log" 2>&1; then
            _kube_log "building kube-apiserver failed; last lines of $log:"
            tail -n 30 "$log" >&2
            return 1
        fi
    fi
    if [[ ! -x "$etcd" ]]; then
        _kube_log "building etcd v$BAOFS_ETCD_VERSION from Go modules (once; log $log)"
        if ! _kube_build_etcd "$go" >>"$log" 2>&1; then
            _kube_log "building etcd failed; last lines of $log:"
            tail -n 30 "$log" >&2
            return 1
        fi
    fi
    "$api" --version >&2 || return 1
}

# ---------------------------------------------------------------------------------------------
BAOFS_ETCD_PID=""
BAOFS_APISERVER_PID=""

_kube_kill() {
    local pid="$1" i
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

peers_kube_stop() {
    _kube_kill "$BAOFS_APISERVER_PID"
    BAOFS_APISERVER_PID=""
    _kube_kill "$BAOFS_ETCD_PID"
    BAOFS_ETCD_PID=""
}

# _kube_certs DIR PORT: CA, apiserver serving cert (127.0.0.1), SA signing key pair, admin token.
_kube_certs() {
    local d="$1"
    mkdir -p "$d" || return 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/ca.key" \
        -out "$d/ca.crt" -days 3650 -subj "/CN=baofs test kubernetes CA" >/dev/null 2>&1 || return 1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/apiserver.key" \
        -out "$d/apiserver.csr" -subj "/CN=kube-apiserver" >/dev/null 2>&1 || return 1
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
        >"$d/apiserver.ext"
    openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -out "$d/apiserver.crt" -days 3650 -extfile "$d/apiserver.ext" >/dev/null 2>&1 || return 1
    rm -f "$d/apiserver.csr" "$d/apiserver.ext"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/sa.key" >/dev/null 2>&1 || return 1
    openssl pkey -in "$d/sa.key" -pubout -out "$d/sa.pub" >/dev/null 2>&1 || return 1
    (umask 077 && printf '%s,admin,admin-uid,"system:masters"\n' "$(openssl rand -hex 24)" >"$d/tokens.csv")
}

# _kube_kubeconfig DIR ADDR: DIR/kubeconfig with the admin token and the CA.
_kube_kubeconfig() {
    local d="$1" addr="$2" token ca
    token=$(cut -d, -f1 "$d/tokens.csv")
    ca=$(base64 -w0 <"$d/ca.crt")
    (
        umask 077
        cat >"$d/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: baofs-test
  cluster:
    server: $addr
    certificate-authority-data: $ca
users:
- name: admin
  user:
    token: $token
contexts:
- name: baofs-test
  context:
    cluster: baofs-test
    user: admin
current-context: baofs-test
EOF
    )
}

# _kube_get ADDR PATH DIR: HTTP status of an authenticated GET.
_kube_get() {
    local token
    token=$(cut -d, -f1 "$3/tokens.csv")
    curl -s -o /dev/null -m 5 -w '%{http_code}' --cacert "$3/ca.crt" \
        -H "Authorization: Bearer $token" "$1$2" 2>/dev/null || true
}

_kube_wait() {
    local addr="$1" path="$2" dir="$3" pid="$4" secs="$5" deadline status=000
    deadline=$((SECONDS + secs))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        status=$(_kube_get "$addr" "$path" "$dir")
        [[ "$status" == 200 ]] && return 0
        sleep 0.2
    done
    _kube_log "GET $path still answers $status after ${secs}s"
    return 1
}

_kube_apply_crds() {
    local addr="$1" dir="$2" root token f name status
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    token=$(cut -d, -f1 "$dir/tokens.csv")
    for f in "$root"/deploy/crds/*.yaml; do
        status=$(curl -s -o "$dir/crd-apply.out" -m 10 -w '%{http_code}' --cacert "$dir/ca.crt" \
            -H "Authorization: Bearer $token" -H 'Content-Type: application/yaml' \
            -X POST --data-binary @"$f" "$addr/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        if [[ "$status" != 201 && "$status" != 409 ]]; then
            _kube_log "creating CRD $f failed ($status):"
            cat "$dir/crd-apply.out" >&2
            return 1
        fi
    done
    # Served once Established: the discovery path answers.
    for name in secretproviderclasses secretproviderclasspodstatuses; do
        _kube_wait "$addr" "/apis/secrets-store.csi.x-k8s.io/v1/$name" "$dir" "$BAOFS_APISERVER_PID" 60 || return 1
    done
}

# peers_kube_start DIR
peers_kube_start() {
    local dir="${1:?peers_kube_start DIR}"
    peers_kube_install || return 1
    command -v curl >/dev/null 2>&1 || _peers_apt_install curl || return 1
    mkdir -p "$dir" || return 1
    dir=$(cd "$dir" && pwd -P)
    local pki="$dir/kube-pki"
    _kube_certs "$pki" || { _kube_log "generating certificates failed"; return 1; }
    local attempt cport pport aport addr ok=""
    for attempt in 1 2 3; do
        cport=$(_peers_free_port) || return 1
        pport=$(_peers_free_port) || return 1
        aport=$(_peers_free_port) || return 1
        [[ "$cport" != "$pport" && "$pport" != "$aport" && "$cport" != "$aport" ]] || continue
        rm -rf "$dir/etcd-data"
        "$(_kube_etcd_bin)" --name default --data-dir "$dir/etcd-data" \
            --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
            --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
            --initial-cluster "default=http://127.0.0.1:$pport" \
            --unsafe-no-fsync --log-level warn >"$dir/etcd.log" 2>&1 </dev/null &
        BAOFS_ETCD_PID=$!
        [[ "$attempt" == 1 ]] && peers_on_exit peers_kube_stop
        addr="https://127.0.0.1:$aport"
        "$(_kube_apiserver_bin)" \
            --etcd-servers="http://127.0.0.1:$cport" \
            --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$aport" \
            --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
            --client-ca-file="$pki/ca.crt" \
            --service-account-issuer="$addr" \
            --service-account-key-file="$pki/sa.pub" \
            --service-account-signing-key-file="$pki/sa.key" \
            --api-audiences="$addr,openbao" \
            --authorization-mode=RBAC --allow-privileged=true \
            --token-auth-file="$pki/tokens.csv" \
            --service-cluster-ip-range=10.96.0.0/24 \
            --endpoint-reconciler-type=none \
            --cert-dir="$dir/kube-certs" \
            --enable-priority-and-fairness=false \
            --profiling=false \
            --v=1 >"$dir/kube-apiserver.log" 2>&1 </dev/null &
        BAOFS_APISERVER_PID=$!
        if _kube_wait "$addr" /readyz "$pki" "$BAOFS_APISERVER_PID" 120; then
            ok=1
            break
        fi
        _kube_log "kube-apiserver did not become ready (attempt $attempt); logs:"
        tail -n 15 "$dir/etcd.log" >&2 || true
        tail -n 30 "$dir/kube-apiserver.log" >&2 || true
        peers_kube_stop
    done
    [[ -n "$ok" ]] || { _kube_log "could not start kube-apiserver"; return 1; }
    _kube_apply_crds "$addr" "$pki" || return 1
    _kube_kubeconfig "$pki" "$addr" || return 1
    export BAOFS_TEST_KUBECONFIG="$pki/kubeconfig"
    export BAOFS_TEST_KUBE_ADDR="$addr"
    _kube_log "kube-apiserver v$BAOFS_KUBE_VERSION at $addr (pid $BAOFS_APISERVER_PID, etcd pid $BAOFS_ETCD_PID, logs in $dir)"
}

# ---------------------------------------------------------------------------------------------
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    # shellcheck source=scripts/peers.sh
    source "$(dirname "${BASH_SOURCE[0]}")/peers.sh"
    case "${1:-install}" in
    install)
        peers_kube_install
        ;;
    env)
        peers_kube_install
        dir=$(mktemp -d "${TMPDIR:-/tmp}/baofs-kube.XXXXXX")
        peers_on_exit "rm -rf '$dir'"
        peers_kube_start "$dir"
        echo "export BAOFS_TEST_KUBECONFIG=$BAOFS_TEST_KUBECONFIG BAOFS_TEST_KUBE_ADDR=$BAOFS_TEST_KUBE_ADDR"
        echo "kube-apiserver running; press ^C to stop." >&2
        wait "$BAOFS_APISERVER_PID" || true
        ;;
    *)
        echo "usage: $0 [install|env]" >&2
        exit 2
        ;;
    esac
fi
