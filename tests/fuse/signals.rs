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
