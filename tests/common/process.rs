//! Child-process helpers shared by tests/csi.rs, tests/k8s.rs, tests/restart.rs and
//! bench/takeover.rs.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A file's text, lossily (logs), or empty when it cannot be read.
pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Starts `baofs holder --state-dir STATE` (stderr to `log`) and waits until its socket accepts
/// a connection; panics with the log if it exits first or `deadline` passes.
pub(crate) fn spawn_holder(state: &Path, log: &Path, deadline: Duration) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_baofs"))
        .args(["holder", "--state-dir"])
        .arg(state)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("create the holder log"))
        .spawn()
        .expect("spawn baofs holder");
    let sock = baofs::holder::socket_path(state);
    let start = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("baofs holder exited early ({status}):\n{}", read_lossy(log));
        }
        assert!(
            start.elapsed() < deadline,
            "the holder socket {} did not accept a connection within {deadline:?}:\n{}",
            sock.display(),
            read_lossy(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Sends SIGTERM to `child`.
pub(crate) fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Polls `child` until it exited or `deadline` passed.
pub(crate) fn wait_exit(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if start.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then waits up to `deadline` for the exit; SIGKILL (and reaps) if it did not come.
/// The exit status, when the process exited by itself in time.
pub(crate) fn stop(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    terminate(child);
    let status = wait_exit(child, deadline);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}
