#!/usr/bin/env bash
# csi-sanity v5.4.0 (kubernetes-csi/csi-test) against a real `baofs csi`.
#
#   sudo scripts/csi-sanity.sh               # as root: the driver mounts its FUSE hub at start
#   BAOFS_SKIP_FUSE=1 scripts/csi-sanity.sh  # explicitly skipped (no root, no /dev/fuse)
#   BAOFS_BIN=/path/to/baofs scripts/csi-sanity.sh   # test this binary instead of building one
#
# Installs csi-sanity with `go install` into $BAOFS_CACHE/peers/csi-sanity-v5.4.0/ (once),
# starts `baofs csi` with a temporary --spc-dir and --state-dir on a temporary socket, runs
# csi-sanity, prints its report and a one-line summary, stops the driver with SIGTERM and checks
# that it exited cleanly, removed its socket and left nothing mounted. Exit code 0 only if all
# of that holds.
#
# csi-sanity checks conformance, not the publish happy path: for a node-only driver its positive
# node specs skip themselves ("Controller Service not provided"). The publish path is covered by
# tests/csi.rs against a real OpenBao. Specs that cannot apply to an ephemeral, read-only,
# node-only driver are skipped by name below, each with its reason.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

VERSION=v5.4.0
BAOFS_CACHE="${BAOFS_CACHE:-${HOME:-/root}/.cache/baofs}"
SANITY_DIR="$BAOFS_CACHE/peers/csi-sanity-$VERSION"
SANITY="$SANITY_DIR/csi-sanity"

say() { echo "csi-sanity.sh: $*" >&2; }
fail() {
    say "FAIL: $*"
    exit 1
}

# Specs skipped by name (ginkgo regular expressions), with why they cannot apply.
SKIPS=(
    # The whole controller suite. baofs is node-only: GetPluginCapabilities has no
    # CONTROLLER_SERVICE, and kubelet never calls a controller. It answers
    # ControllerGetCapabilities (one UNKNOWN capability, as upstream does) only because the
    # Node Service setup of csi-sanity calls it unconditionally; csi-sanity then runs these
    # specs whatever the plugin capabilities say, and they test CreateVolume,
    # ValidateVolumeCapabilities and friends that a node-only driver does not have.
    'Controller Service \[Controller Server\]'
    # Creates the volume with the controller's CreateVolume and publishes it read-write with no
    # volume context. An ephemeral secrets volume has no CreateVolume, must be read-only
    # ("Readonly is not true in request") and needs secretProviderClass. That the driver
    # removes the target directory it created on unpublish is checked by tests/csi.rs.
    'Node Service NodeUnpublishVolume should remove target path'
)

if [[ "${BAOFS_SKIP_FUSE:-0}" == 1 ]]; then
    say "SKIPPED: BAOFS_SKIP_FUSE=1 (baofs csi mounts a FUSE hub at start)"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || fail "baofs csi mounts FUSE: run as root (or BAOFS_SKIP_FUSE=1 to skip explicitly)"
[[ -c /dev/fuse ]] || fail "/dev/fuse is missing (modprobe fuse), or BAOFS_SKIP_FUSE=1 to skip explicitly"

# --- csi-sanity --------------------------------------------------------------------------------
if [[ ! -x "$SANITY" ]]; then
    if ! command -v go >/dev/null 2>&1; then
        for d in /usr/local/go/bin /usr/lib/go/bin "${HOME:-/root}/go/bin"; do
            [[ -x "$d/go" ]] && export PATH="$d:$PATH" && break
        done
    fi
    command -v go >/dev/null 2>&1 || fail "go is needed to install csi-sanity (apt-get install golang-go)"
    say "installing csi-sanity $VERSION into $SANITY_DIR"
    rm -rf "$SANITY_DIR.tmp"
    mkdir -p "$SANITY_DIR.tmp" || fail "mkdir $SANITY_DIR.tmp"
    GOBIN="$SANITY_DIR.tmp" GOFLAGS=-mod=mod go install \
        "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$VERSION" ||
        fail "go install csi-sanity@$VERSION failed"
    rm -rf "$SANITY_DIR"
    mv "$SANITY_DIR.tmp" "$SANITY_DIR" || fail "mv $SANITY_DIR.tmp"
fi
[[ -x "$SANITY" ]] || fail "csi-sanity missing at $SANITY"

# --- baofs --------------------------------------------------------------------------------------
if [[ -z "${BAOFS_BIN:-}" ]]; then
    if ! command -v cargo >/dev/null 2>&1; then
        for d in "${CARGO_HOME:-/nonexistent}/bin" "${HOME:-/root}/.cargo/bin" /root/.cargo/bin; do
            [[ -x "$d/cargo" ]] && export PATH="$d:$PATH" && break
        done
    fi
    cargo build --quiet --bin baofs || fail "cargo build --bin baofs failed"
    BAOFS_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/baofs"
fi
[[ -x "$BAOFS_BIN" ]] || fail "baofs binary missing at $BAOFS_BIN"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/baofs-sanity.XXXXXX") || fail "mktemp"
WORK=$(cd "$WORK" && pwd -P)
mkdir -p "$WORK/spc" "$WORK/state"
SOCKET="$WORK/csi.sock"

# fuse.baofs mount points under $WORK, deepest first.
mounts_under_work() {
    awk -v root="$WORK/" '{
        for (i = 7; i <= NF; i++) if ($i == "-") { fs = $(i + 1); break }
        mp = $5; gsub(/\\040/, " ", mp)
        if (index(mp "/", root) == 1) print length(mp) "\t" mp "\t" fs
    }' /proc/self/mountinfo | sort -rn | cut -f2-
}

DRIVER_PID=""
cleanup() {
    local mp
    if [[ -n "$DRIVER_PID" ]] && kill -0 "$DRIVER_PID" 2>/dev/null; then
        kill -TERM "$DRIVER_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$DRIVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DRIVER_PID" 2>/dev/null || true
    fi
    while IFS=$'\t' read -r mp _; do
        [[ -n "$mp" ]] && umount -l "$mp" 2>/dev/null
    done < <(mounts_under_work)
    if [[ -z "$(mounts_under_work)" ]]; then
        rm -rf "$WORK"
    else
        say "not removing $WORK: something is still mounted below it"
    fi
}
trap cleanup EXIT

say "starting $BAOFS_BIN csi on unix://$SOCKET"
"$BAOFS_BIN" csi --nodeid csi-sanity-node --endpoint "unix://$SOCKET" \
    --spc-dir "$WORK/spc" --state-dir "$WORK/state" \
    >"$WORK/driver.out" 2>"$WORK/driver.log" </dev/null &
DRIVER_PID=$!
deadline=$((SECONDS + 30))
until [[ -S "$SOCKET" ]] && grep -q 'serving CSI' "$WORK/driver.out" 2>/dev/null; do
    if ! kill -0 "$DRIVER_PID" 2>/dev/null; then
        cat "$WORK/driver.log" >&2
        fail "baofs csi exited before serving"
    fi
    ((SECONDS < deadline)) || { cat "$WORK/driver.log" >&2; fail "baofs csi did not serve within 30s"; }
    sleep 0.1
done

# --- run ------------------------------------------------------------------------------------------
args=(
    "--csi.endpoint=unix://$SOCKET"
    "--csi.mountdir=$WORK/mnt"
    "--csi.stagingdir=$WORK/staging"
    "--csi.junitfile=$WORK/junit.xml"
    --ginkgo.no-color
)
for s in "${SKIPS[@]}"; do
    args+=("--ginkgo.skip=$s")
done
say "running csi-sanity $VERSION (skipped by name: ${#SKIPS[@]} patterns, see this script)"
"$SANITY" "${args[@]}" 2>&1
sanity_rc=$?

# One line per spec, then the plain summary line.
summary=""
if [[ -s "$WORK/junit.xml" ]]; then
    summary=$(python3 - "$WORK/junit.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
passed = failed = skipped = 0
for case in root.iter("testcase"):
    name = case.get("name", "").removeprefix("[It] ")
    if case.find("failure") is not None or case.find("error") is not None:
        failed += 1
        print(f"csi-sanity: FAILED  {name}")
    elif case.find("skipped") is not None:
        skipped += 1
    else:
        passed += 1
        print(f"csi-sanity: passed  {name}")
print(f"csi-sanity: {passed} passed, {failed} failed, {skipped} skipped")
EOF
    )
fi

# --- stop, check -----------------------------------------------------------------------------------
kill -TERM "$DRIVER_PID" 2>/dev/null
driver_rc=""
for _ in $(seq 200); do
    if ! kill -0 "$DRIVER_PID" 2>/dev/null; then
        wait "$DRIVER_PID"
        driver_rc=$?
        break
    fi
    sleep 0.1
done
DRIVER_PID_DONE=$DRIVER_PID
DRIVER_PID=""

status=0
[[ -n "$summary" ]] && echo "$summary" | grep -v '^csi-sanity: [0-9]' || true
if [[ "$sanity_rc" != 0 ]]; then
    say "csi-sanity failed (exit $sanity_rc)"
    status=1
fi
if [[ "$driver_rc" != 0 ]]; then
    say "baofs csi (pid $DRIVER_PID_DONE) did not exit cleanly on SIGTERM (exit ${driver_rc:-still running}); its log:"
    cat "$WORK/driver.log" >&2
    status=1
fi
if [[ -e "$SOCKET" ]]; then
    say "the driver left its socket $SOCKET"
    status=1
fi
left=$(mounts_under_work)
if [[ -n "$left" ]]; then
    say "left mounted: $left"
    status=1
fi
if [[ -n "$summary" ]]; then
    echo "$summary" | grep '^csi-sanity: [0-9]'
else
    say "no junit report from csi-sanity"
    status=1
fi
exit "$status"
