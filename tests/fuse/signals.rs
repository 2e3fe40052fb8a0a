//! Test 8: SIGTERM/SIGINT unmount cleanly and exit 0, also while a file is held open.

use std::fs::File;
use std::io::Read;

use serde_json::json;

use crate::harness::{MountOpts, Mounted, mounts_at, mounts_under, obj, setup, spc_yaml, unique};

fn start(cx: &crate::harness::Ctx) -> Mounted {
    let name = unique("sig");
    cx.bao.kv2_put(&name, json!({"k": "signal-value"}));
    let spc = spc_yaml(
        &unique("sig"),
        &cx.bao.addr,
        "sig",
        &[obj("k", &format!("secret/data/{name}"), Some("k"))],
    );
    Mounted::start(MountOpts::new(cx, spc))
}

fn assert_unmounted(target: &std::path::Path, state: &std::path::Path) {
    let at = mounts_at(target);
    assert!(at.is_empty(), "target still mounted: {at:?}");
    let hub = mounts_under(state);
    assert!(hub.is_empty(), "still mounted under the state dir: {hub:?}");
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    let Some(cx) = setup() else { return };
    let m = start(&cx);
    assert_eq!(m.read_string("k"), "signal-value");
    let (target, state) = (m.target.clone(), m.state.clone());
    assert!(!mounts_at(&target).is_empty(), "target not mounted");
    // `stop` asserts exit status 0 and nothing left mounted, before any safety-net cleanup.
    let status = m.stop();
    assert_eq!(status.code(), Some(0));
    assert_unmounted(&target, &state);
}

#[test]
fn sigint_unmounts_and_exits_zero() {
    let Some(cx) = setup() else { return };
    let m = start(&cx);
    let (target, state) = (m.target.clone(), m.state.clone());
    let status = m.stop_with(libc::SIGINT);
    assert_eq!(status.code(), Some(0));
    assert_unmounted(&target, &state);
}

#[test]
fn sigterm_with_open_file_still_unmounts() {
    let Some(cx) = setup() else { return };
    let m = start(&cx);
    let (target, state) = (m.target.clone(), m.state.clone());
    let mut held = File::open(m.path("k")).expect("open file to hold");
    let mut buf = String::new();
    held.read_to_string(&mut buf).expect("read held file");
    assert_eq!(buf, "signal-value");
    // Also hold the directory open (cwd-like pin).
    let held_dir = File::open(&target).expect("open target dir");
    let status = m.stop();
    assert_eq!(status.code(), Some(0));
    assert_unmounted(&target, &state);
    drop(held);
    drop(held_dir);
}

/// A process killed with SIGKILL leaves a dead connection: a file the kernel has not cached
/// answers ENOTCONN (a file already read keeps being served from the page cache, since opens
/// and cached reads never reach userspace). The next baofs process with the same state
/// directory detaches those dead mounts (and only those) before it mounts anything, instead of
/// leaving them to break pods until they are recreated.
#[test]
fn sigkill_leaves_enotconn_and_the_next_start_detaches_it() {
    let Some(cx) = setup() else { return };
    let state = crate::harness::TempDir::new("sigkill-state");
    let name = unique("kill");
    cx.bao
        .kv2_put(&name, json!({"k": "survivor", "never": "read"}));
    let spc = spc_yaml(
        &unique("kill"),
        &cx.bao.addr,
        "kill",
        &[
            obj("k", &format!("secret/data/{name}"), Some("k")),
            obj("never", &format!("secret/data/{name}"), Some("never")),
        ],
    );
    let first = Mounted::start(MountOpts::new(&cx, spc.clone()).state(state.path()));
    assert_eq!(first.read_string("k"), "survivor");
    let (dead_target, _keep) = first.kill_hard();
    let err = std::fs::read(dead_target.join("never")).expect_err("lookup on a dead mount");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");

    let second = Mounted::start(MountOpts::new(&cx, spc).state(state.path()));
    assert!(
        mounts_at(&dead_target).is_empty(),
        "the dead target is still mounted: {:?}",
        mounts_at(&dead_target)
    );
    assert_eq!(second.read_string("k"), "survivor");
    assert!(
        second
            .stderr()
            .contains("detached a volume of a dead baofs process"),
        "no log line about the detached mount:\n{}",
        second.stderr()
    );
    let status = second.stop();
    assert_eq!(status.code(), Some(0));
    assert!(mounts_under(state.path()).is_empty());
}
