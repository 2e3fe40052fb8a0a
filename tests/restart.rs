//! Restart survival of `baofs csi` (issue 7), end to end: real `baofs holder` and `baofs csi`
//! processes, a tonic CSI client on the Unix socket, real FUSE mounts, a real OpenBao (jwt auth
//! with tokens this test signs, as tests/csi.rs does).
//!
//! The contract under test (README, `baofs holder` in src/holder.rs):
//! - `baofs holder --state-dir D` runs first and keeps the driver's `/dev/fuse` connection alive.
//! - `baofs csi` SIGKILLed (its whole process group) and started again with the same state dir,
//!   SPC dir and endpoint takes over every volume: targets stay mounted (same mount ids), reads
//!   issued during the gap block and complete, and it prints `baofs: took over <N> volumes`
//!   before `baofs: serving CSI on <path>`.
//! - A second `baofs csi` started while the first runs is a planned handoff: the first prints
//!   `baofs: handed over to a successor` and exits 0 without unmounting; the second prints
//!   `baofs: took over <N> volumes` and `baofs: handoff gap <X> ms`.
//! - `BAOFS_FAULT_STALL_READ=<name>` (test-only) makes the driver swallow a READ of `<name>`
//!   and print `baofs: fault injection: stalling READ of <name>` on stderr.
//! - Holder killed too: the next driver starts cleanly, detaches the dead targets (logging
//!   "detached a volume of a dead baofs process" for each) and takes nothing over.
//!
//! Run with `sudo scripts/test.sh`; without root, /dev/fuse or OpenBao the tests fail, and
//! `BAOFS_SKIP_FUSE=1` skips them. Waits poll observable conditions with deadlines. Every
//! driver and holder is stopped and every mount removed, also when a test fails: drivers are
//! dropped before their `Node`, whose drop detaches what is left and only then stops the holder.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::{BufRead, BufReader, ErrorKind};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use baofs_csi::v1::node_client::NodeClient;
use serde_json::{Value, json};
use tonic::transport::Channel;

#[path = "common/bao.rs"]
mod bao;
#[path = "common/csi_fixture.rs"]
mod fixture;
#[path = "common/process.rs"]
mod process;
use fixture::{
    AUDIENCE, Ctx, DEADLINE, Pod, TempDir, connect, driver_command, eventually, is_mounted,
    kubelet_target, mounts_under, publish_request, setup, tokens_json, unique, unpublish_request,
    volume_id, write_spc,
};
use process::{read_lossy, spawn_holder, stop, terminate, wait_exit};

/// Every driver here polls OpenBao this often.
const POLL: &str = "1s";
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A reader operation in flight this long after the driver died counts as blocked by the gap
/// (every operation takes well under a millisecond while a driver serves).
const BLOCKED: Duration = Duration::from_millis(200);
/// Iterations every reader must complete after the successor is serving.
const MORE_ITERATIONS: u64 = 100;
/// How long a read that was in flight at the SIGKILL may take to complete after the restart.
const IN_FLIGHT_DEADLINE: Duration = Duration::from_secs(30);
const NS: &str = "restart";

// -------------------------------------------------------------------------------------------
// The node: state dir, SPC dir and CSI socket shared by every driver incarnation, and the holder

struct Node {
    dir: TempDir,
    socket: PathBuf,
    spc_dir: PathBuf,
    state: PathBuf,
    holder: Option<Child>,
    holder_log: PathBuf,
}

impl Node {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(&format!("rs-{name}"));
        let spc_dir = dir.path.join("spc");
        std::fs::create_dir_all(&spc_dir).unwrap();
        Self {
            socket: dir.path.join("plugin/csi.sock"),
            state: dir.path.join("state"),
            holder_log: dir.path.join("holder.log"),
            spc_dir,
            dir,
            holder: None,
        }
    }

    /// Starts `baofs holder --state-dir D` and waits until its socket accepts a connection.
    fn start_holder(&mut self) {
        self.holder = Some(spawn_holder(&self.state, &self.holder_log, DEADLINE));
    }

    /// SIGKILL, as a node-level crash would.
    fn kill_holder(&mut self) {
        let mut child = self.holder.take().expect("the holder runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM once nothing is mounted any more; asserts a clean exit.
    fn stop_holder(&mut self) {
        let left = mounts_under(&self.dir.path);
        assert!(
            left.is_empty(),
            "the holder may only stop after every mount is gone: {left:?}"
        );
        let mut child = self.holder.take().expect("the holder runs");
        let status = stop(&mut child, DEADLINE);
        assert!(
            status.is_some_and(|s| s.success()),
            "baofs holder did not exit cleanly on SIGTERM ({status:?}):\n{}",
            read_lossy(&self.holder_log)
        );
    }

    /// Spawns `baofs csi` for this node with `env` added (it does not wait for readiness).
    fn spawn_driver(&self, label: &str, env: &[(&str, &str)]) -> Driver {
        let stderr = self.dir.path.join(format!("{label}.log"));
        let mut cmd = driver_command(&self.socket, &self.spc_dir, &self.state, POLL);
        cmd.env_remove("BAOFS_FAULT_STALL_READ")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .process_group(0);
        let mut child = cmd.spawn().expect("spawn baofs csi");
        let pgid = libc::pid_t::try_from(child.id()).unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Driver {
            label: label.to_owned(),
            child: Some(child),
            pgid,
            lines: rx,
            stdout: Vec::new(),
            stderr,
            socket: self.socket.clone(),
        }
    }

    /// A kubelet-style target: the parent exists, `mount` does not.
    fn target(&self, pod_uid: &str, volume: &str) -> PathBuf {
        kubelet_target(&self.dir.path, pod_uid, volume)
    }

    /// The end of a test, once every volume was unpublished and the driver stopped: a driver
    /// with a holder exits on SIGTERM without unmounting (the holder keeps its connection for
    /// the next start), so its hub under the state dir may be left, and only that. Unmounts it,
    /// then stops the holder, last; nothing may be left mounted.
    fn teardown(&mut self) {
        let left = mounts_under(&self.dir.path);
        for (mp, fstype) in &left {
            assert!(
                mp.starts_with(&self.state),
                "only a hub under the state dir may outlive the driver, found {mp:?} ({fstype}): \
                 {left:?}"
            );
            unmount(mp);
        }
        if self.holder.is_some() {
            self.stop_holder();
        }
        self.assert_no_mounts();
    }

    /// Asserts that no mount of any type is left under the node's directory.
    fn assert_no_mounts(&self) {
        let left = mounts_under(&self.dir.path);
        assert!(left.is_empty(), "mounts left under the test dir: {left:?}");
    }
}

impl Drop for Node {
    /// Runs after the drivers were dropped (declared after the node): detaches whatever is left
    /// (which fails blocked readers only once the connection dies), then stops the holder, last.
    fn drop(&mut self) {
        let left = mounts_under(&self.dir.path);
        for (mp, _) in &left {
            detach(mp);
        }
        if let Some(mut child) = self.holder.take() {
            stop(&mut child, DEADLINE);
        }
        if !left.is_empty() {
            eprintln!("restart: lazily unmounted leftovers: {left:?}");
        }
    }
}

/// umount2(path, 0): a plain unmount; panics if it fails.
#[allow(unsafe_code)]
fn unmount(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    assert_eq!(
        rc,
        0,
        "umount {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// umount2(MNT_DETACH) without touching the (possibly unanswered) mount: no stat, no
/// canonicalization, so it cannot block on a FUSE connection nobody serves.
#[allow(unsafe_code)]
fn detach(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        eprintln!(
            "restart: umount2({}, MNT_DETACH): {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

// -------------------------------------------------------------------------------------------
// One `baofs csi` incarnation, in its own process group

struct Driver {
    label: String,
    child: Option<Child>,
    pgid: libc::pid_t,
    lines: mpsc::Receiver<String>,
    /// Every stdout line received so far.
    stdout: Vec<String>,
    stderr: PathBuf,
    socket: PathBuf,
}

impl Driver {
    fn log(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// Receives stdout lines until one satisfies `pred`; panics (with the log) when the process
    /// closes its stdout first or `deadline` passes.
    fn wait_line(&mut self, what: &str, deadline: Duration, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let left = deadline.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "[{}] no stdout line {what} within {deadline:?}; stdout so far: {:?}\nlog:\n{}",
                    self.label,
                    self.stdout,
                    self.log()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    panic!(
                        "[{}] stdout closed ({status:?}) before a line {what}; stdout: {:?}\n\
                         log:\n{}",
                        self.label,
                        self.stdout,
                        self.log()
                    )
                }
            }
        }
    }

    /// The next stdout line, if one arrived.
    fn poll_line(&mut self) -> Option<String> {
        let line = self.lines.try_recv().ok()?;
        self.stdout.push(line.clone());
        Some(line)
    }

    /// Waits for `baofs: serving CSI on <socket>`; returns the stdout lines printed before it.
    fn wait_serving(&mut self) -> Vec<String> {
        let ready = format!("baofs: serving CSI on {}", self.socket.display());
        self.wait_line(&format!("{ready:?}"), DEADLINE, |l| l == ready);
        self.stdout[..self.stdout.len() - 1].to_vec()
    }

    /// The CSI node client (the driver is serving).
    async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(connect(&self.socket).await.unwrap())
    }

    /// SIGKILL to the whole process group; waits until the child is reaped and the group is
    /// empty.
    #[allow(unsafe_code)]
    fn kill_group(&mut self) {
        let mut child = self.child.take().expect("the driver runs");
        kill_group(self.pgid, libc::SIGKILL);
        child.wait().unwrap();
        let start = Instant::now();
        // SAFETY: kill(2) with signal 0 only checks for existence.
        while unsafe { libc::kill(-self.pgid, 0) } == 0 {
            assert!(
                start.elapsed() < DEADLINE,
                "[{}] process group {} still has members {DEADLINE:?} after SIGKILL",
                self.label,
                self.pgid
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit by itself.
    fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the driver runs");
        match wait_exit(&mut child, deadline) {
            Some(s) => s,
            None => {
                self.child = Some(child);
                panic!(
                    "[{}] did not exit within {deadline:?}; stdout: {:?}\nlog:\n{}",
                    self.label,
                    self.stdout,
                    self.log()
                )
            }
        }
    }

    /// Every stdout line up to EOF (the process exited).
    fn rest_of_stdout(&mut self) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(DEADLINE) {
            self.stdout.push(line);
        }
        self.stdout.clone()
    }

    /// SIGTERM, asserts a clean exit; returns the log. Without a holder the driver unmounts
    /// everything; with one it leaves its hub to the holder (see `Node::teardown`).
    fn stop(&mut self) -> String {
        let mut child = self.child.take().expect("the driver runs");
        terminate(&mut child);
        let status = wait_exit(&mut child, DEADLINE);
        if status.is_none() {
            kill_group(self.pgid, libc::SIGKILL);
            let _ = child.wait();
        }
        let log = self.log();
        assert!(
            status.is_some_and(|s| s.success()),
            "[{}] baofs csi did not exit cleanly on SIGTERM ({status:?}):\n{log}",
            self.label
        );
        log
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        terminate(&mut child);
        if wait_exit(&mut child, DEADLINE).is_none() {
            kill_group(self.pgid, libc::SIGKILL);
            let _ = child.wait();
        }
        eprintln!(
            "--- {} stdout: {:?}\n--- {} log ---\n{}",
            self.label,
            self.stdout,
            self.label,
            self.log()
        );
    }
}

#[allow(unsafe_code)]
fn kill_group(pgid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; `pgid` is the group of a child we
    // spawned with process_group(0) and have not reaped yet.
    let rc = unsafe { libc::kill(-pgid, sig) };
    if rc != 0 {
        eprintln!(
            "restart: kill(-{pgid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }
}

fn took_over(n: usize) -> String {
    format!("baofs: took over {n} volumes")
}

// -------------------------------------------------------------------------------------------
// Volumes

/// One published volume: one KV v2 secret with a key per file, its own role, SPC and pod.
struct Vol {
    id: String,
    target: PathBuf,
    secret: String,
    /// (file name, expected content)
    files: Vec<(String, String)>,
}

impl Vol {
    fn read(&self, name: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.target.join(name))
    }

    fn expected(&self, name: &str) -> &str {
        &self.files.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// Every file reads as expected.
    fn assert_readable(&self) {
        for (name, value) in &self.files {
            assert_eq!(
                self.read(name)
                    .unwrap_or_else(|e| panic!("read {}/{name}: {e}", self.target.display())),
                *value
            );
        }
    }
}

/// Writes the secret, role and SPC of a volume with `files`, and publishes it through `csi`
/// (reads nothing: a READ may be one the driver is told to stall).
async fn publish_volume(
    cx: &Ctx,
    n: &Node,
    csi: &mut NodeClient<Channel>,
    label: &str,
    files: &[&str],
) -> Vol {
    let sa = unique("sa");
    let pod = Pod::new(NS, &sa);
    let secret = unique(&format!("rs-{label}"));
    let role = unique("role");
    let spc = unique(&format!("spc-{label}"));
    let files: Vec<(String, String)> = files
        .iter()
        .map(|f| ((*f).to_owned(), unique(&format!("{label}-{f}-v1"))))
        .collect();
    cx.bao
        .role(&role, NS, &sa, &[format!("secret/data/{secret}")])
        .await;
    let data: serde_json::Map<String, Value> =
        files.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    cx.bao.kv2_put(&secret, Value::Object(data)).await;
    let objects: String = files
        .iter()
        .map(|(f, _)| {
            format!("- objectName: {f}\n  secretPath: secret/data/{secret}\n  secretKey: {f}\n")
        })
        .collect();
    write_spc(
        &n.spc_dir,
        NS,
        &spc,
        &[("vaultAddress", &cx.bao.addr), ("roleName", &role)],
        &objects,
    );
    let vol = Vol {
        id: volume_id(),
        target: n.target(&pod.uid, label),
        secret,
        files,
    };
    let req = publish_request(
        &vol.id,
        &vol.target,
        pod.context(&spc, Some(tokens_json(AUDIENCE, &pod.token()))),
    );
    csi.node_publish_volume(req)
        .await
        .unwrap_or_else(|e| panic!("publish {label}: {e:?}"));
    assert!(is_mounted(&vol.target), "{label} not mounted");
    vol
}

/// Publishes `count` volumes `v0`, `v1`, … with files `password` and `user`, each checked
/// readable.
async fn publish_readable(
    cx: &Ctx,
    n: &Node,
    csi: &mut NodeClient<Channel>,
    count: usize,
) -> Vec<Vol> {
    let mut vols = Vec::new();
    for i in 0..count {
        let v = publish_volume(cx, n, csi, &format!("v{i}"), &["password", "user"]).await;
        v.assert_readable();
        vols.push(v);
    }
    vols
}

async fn unpublish_all(csi: &mut NodeClient<Channel>, vols: &[Vol]) {
    for v in vols {
        csi.node_unpublish_volume(unpublish_request(&v.id, &v.target))
            .await
            .unwrap_or_else(|e| panic!("unpublish {}: {e:?}", v.target.display()));
        assert!(
            !is_mounted(&v.target),
            "{} still mounted",
            v.target.display()
        );
    }
}

/// Mount ids (first field of mountinfo) of the targets: unchanged ids mean no remount.
fn mount_ids(vols: &[Vol]) -> Vec<Option<u64>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    vols.iter()
        .map(|v| {
            let want = v.target.to_str().unwrap();
            text.lines().find_map(|l| {
                let mut f = l.split(' ');
                let id = f.next()?.parse().ok()?;
                (f.nth(3)? == want).then_some(id)
            })
        })
        .collect()
}

/// Rewrites `file` of `vol` in OpenBao (the other keys unchanged) and polls until the mounted
/// file shows it.
async fn rotate_and_wait(cx: &Ctx, vol: &mut Vol, file: &str) {
    let fresh = unique(&format!("{file}-rotated"));
    for (n, v) in &mut vol.files {
        if n == file {
            v.clone_from(&fresh);
        }
    }
    let data: serde_json::Map<String, Value> = vol
        .files
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    cx.bao.kv2_put(&vol.secret, Value::Object(data)).await;
    let deadline = POLL_INTERVAL + Duration::from_secs(15);
    let start = Instant::now();
    eventually(
        "the rotated value is visible after the takeover",
        deadline,
        || (vol.read(file).ok()? == fresh).then_some(()),
    )
    .await;
    eprintln!("restart: rotation visible after {:?}", start.elapsed());
}

/// `baofs status --state-dir D --json` lists exactly `vols`' targets (polled: a status socket
/// of the dead process may linger briefly).
async fn assert_status_lists(n: &Node, vols: &[Vol]) {
    let want: BTreeSet<String> = vols
        .iter()
        .map(|v| v.target.display().to_string())
        .collect();
    let start = Instant::now();
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_baofs"))
            .args(["status", "--json", "--state-dir"])
            .arg(&n.state)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            let reports: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let targets: Vec<String> = reports
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| p["volumes"].as_array().cloned().unwrap_or_default())
                .filter_map(|v| v["target"].as_str().map(str::to_owned))
                .collect();
            if targets.len() == want.len()
                && targets.iter().cloned().collect::<BTreeSet<_>>() == want
            {
                return;
            }
        }
        let last = format!(
            "{}\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            start.elapsed() < DEADLINE,
            "baofs status does not list exactly {want:?}:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("write /proc/sys/vm/drop_caches");
}

/// `uname -r`, and whether it has FUSE_NOTIFY_RESEND (Linux >= 6.9).
fn kernel_resends() -> (String, bool) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let resends = (major, minor) >= (6, 9);
    (release, resends)
}

// -------------------------------------------------------------------------------------------
// Readers looping on every volume

struct ReaderStats {
    target: PathBuf,
    iterations: AtomicU64,
    /// Microseconds since `Readers::epoch` (+1) when the current operation started; 0: idle.
    in_flight_since: AtomicU64,
    max_latency_us: AtomicU64,
    slowest: Mutex<String>,
    error_count: AtomicU64,
    /// Distinct failures (operation, path, errno) and how often each happened.
    errors: Mutex<BTreeMap<String, u64>>,
}

struct Readers {
    stop: Arc<AtomicBool>,
    epoch: Instant,
    stats: Vec<Arc<ReaderStats>>,
    handles: Vec<JoinHandle<()>>,
}

/// What the readers saw.
struct ReadReport {
    iterations: Vec<u64>,
    max_latency: Duration,
    slowest: String,
    errors: Errors,
    error_count: u64,
}

/// Distinct reader failures with their counts.
#[derive(Default)]
struct Errors(BTreeMap<String, u64>);

impl Errors {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (what, n) in &self.0 {
            writeln!(f, "  {n} x {what}")?;
        }
        Ok(())
    }
}

impl Readers {
    /// One thread per volume: read every file (content must match), list the target (must list
    /// the files), stat a missing name (must be NotFound); the last two reach the daemon every
    /// time. Every failure is recorded with its errno.
    fn start(vols: &[Vol]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let mut stats = Vec::new();
        let mut handles = Vec::new();
        for v in vols {
            let s = Arc::new(ReaderStats {
                target: v.target.clone(),
                iterations: AtomicU64::new(0),
                in_flight_since: AtomicU64::new(0),
                max_latency_us: AtomicU64::new(0),
                slowest: Mutex::new(String::new()),
                error_count: AtomicU64::new(0),
                errors: Mutex::new(BTreeMap::new()),
            });
            stats.push(Arc::clone(&s));
            let files = v.files.clone();
            let stop = Arc::clone(&stop);
            handles.push(thread::spawn(move || reader_loop(&s, &files, &stop, epoch)));
        }
        Self {
            stop,
            epoch,
            stats,
            handles,
        }
    }

    fn iterations(&self) -> Vec<u64> {
        self.stats
            .iter()
            .map(|s| s.iterations.load(Ordering::SeqCst))
            .collect()
    }

    fn errors(&self) -> Errors {
        let mut all = Errors::default();
        for s in &self.stats {
            for (what, n) in s.errors.lock().unwrap().iter() {
                *all.0.entry(what.clone()).or_default() += n;
            }
        }
        all
    }

    /// The longest time an operation has been in flight right now.
    fn longest_in_flight(&self) -> Duration {
        let now = self.epoch.elapsed().as_micros() as u64;
        self.stats
            .iter()
            .map(|s| s.in_flight_since.load(Ordering::SeqCst))
            .filter(|&since| since != 0)
            .map(|since| Duration::from_micros(now.saturating_sub(since - 1)))
            .max()
            .unwrap_or_default()
    }

    /// Polls until every reader completed `n` iterations.
    fn wait_iterations(&self, what: &str, target: &[u64], deadline: Duration) {
        let start = Instant::now();
        loop {
            let now = self.iterations();
            if now.iter().zip(target).all(|(a, b)| a >= b) {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "readers did not reach {target:?} iterations ({what}) within {deadline:?}: at \
                 {now:?}, an operation in flight for {:?}; errors:\n{:?}",
                self.longest_in_flight(),
                self.errors()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls until an operation has been in flight for [`BLOCKED`] (the gap is observed).
    /// Fails at once if a reader saw an error instead (ENOTCONN: the connection died).
    fn wait_blocked(&self) {
        let start = Instant::now();
        loop {
            let errors = self.errors();
            assert!(
                errors.is_empty(),
                "readers failed while the driver was down (the connection must outlive the \
                 driver):\n{errors:?}"
            );
            let inflight = self.longest_in_flight();
            if inflight >= BLOCKED {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no reader blocked within {DEADLINE:?} of the SIGKILL (iterations {:?})",
                self.iterations()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the readers and joins them (bounded).
    fn stop(mut self) -> ReadReport {
        self.stop.store(true, Ordering::SeqCst);
        let start = Instant::now();
        for h in std::mem::take(&mut self.handles) {
            while !h.is_finished() {
                assert!(
                    start.elapsed() < DEADLINE,
                    "a reader did not stop within {DEADLINE:?} (an operation in flight for {:?})",
                    self.longest_in_flight()
                );
                thread::sleep(Duration::from_millis(5));
            }
            h.join().unwrap();
        }
        let (mut max, mut slowest) = (0, String::new());
        for s in &self.stats {
            let m = s.max_latency_us.load(Ordering::SeqCst);
            if m > max {
                max = m;
                slowest = format!("{} on {}", s.slowest.lock().unwrap(), s.target.display());
            }
        }
        ReadReport {
            iterations: self.iterations(),
            max_latency: Duration::from_micros(max),
            slowest,
            errors: self.errors(),
            error_count: self
                .stats
                .iter()
                .map(|s| s.error_count.load(Ordering::SeqCst))
                .sum(),
        }
    }
}

impl Drop for Readers {
    /// Never joins: a reader may be blocked on a connection nobody serves; it ends when the
    /// `Node` drop kills the holder (the connection aborts).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn reader_loop(s: &ReaderStats, files: &[(String, String)], stop: &AtomicBool, epoch: Instant) {
    let names: BTreeSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let missing = s.target.join("no-such-file");
    let fail = |what: String| {
        s.error_count.fetch_add(1, Ordering::SeqCst);
        *s.errors.lock().unwrap().entry(what).or_default() += 1;
    };
    let errno = |e: &std::io::Error| match e.raw_os_error() {
        Some(n) => format!("{e} (errno {n})"),
        None => format!("{e} (no errno)"),
    };
    while !stop.load(Ordering::SeqCst) {
        for (name, expected) in files {
            let p = s.target.join(name);
            match timed(s, epoch, &format!("read {name}"), || {
                std::fs::read_to_string(&p)
            }) {
                Ok(got) if got == *expected => {}
                Ok(got) => fail(format!(
                    "read {}: content {got:?}, expected {expected:?}",
                    p.display()
                )),
                Err(e) => fail(format!("read {}: {}", p.display(), errno(&e))),
            }
        }
        let listed = timed(s, epoch, "read_dir", || {
            std::fs::read_dir(&s.target)?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<BTreeSet<String>>>()
        });
        match listed {
            Ok(got) if got == names => {}
            Ok(got) => fail(format!(
                "read_dir {}: {got:?}, expected {names:?}",
                s.target.display()
            )),
            Err(e) => fail(format!("read_dir {}: {}", s.target.display(), errno(&e))),
        }
        match timed(s, epoch, "stat no-such-file", || {
            std::fs::metadata(&missing)
        }) {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => fail(format!("stat {}: {}", missing.display(), errno(&e))),
            Ok(_) => fail(format!("stat {}: exists", missing.display())),
        }
        s.iterations.fetch_add(1, Ordering::SeqCst);
    }
}

fn timed<T>(s: &ReaderStats, epoch: Instant, what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    s.in_flight_since
        .store(epoch.elapsed().as_micros() as u64 + 1, Ordering::SeqCst);
    let out = f();
    s.in_flight_since.store(0, Ordering::SeqCst);
    let us = start.elapsed().as_micros() as u64;
    if s.max_latency_us.fetch_max(us, Ordering::SeqCst) < us {
        *s.slowest.lock().unwrap() = what.to_owned();
    }
    out
}

fn assert_no_read_errors(r: &ReadReport) {
    assert!(
        r.error_count == 0,
        "readers saw {} errors:\n{:?}",
        r.error_count,
        r.errors
    );
}

// -------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_driver_keeps_every_volume_readable() {
    let Some(cx) = setup() else { return };
    cx.bao.ensure_jwt_auth().await;
    let mut n = Node::new("sigkill");
    n.start_holder();
    let mut d1 = n.spawn_driver("driver-1", &[]);
    let before = d1.wait_serving();
    assert!(
        !before.iter().any(|l| l.contains("took over")),
        "a first start has nothing to take over: {before:?}"
    );
    let mut csi = d1.node().await;
    let mut vols = publish_readable(&cx, &n, &mut csi, 3).await;
    let ids = mount_ids(&vols);
    assert!(ids.iter().all(Option::is_some), "{ids:?}");

    let readers = Readers::start(&vols);
    readers.wait_iterations("before the kill", &[10, 10, 10], DEADLINE);

    // The crash: SIGKILL the driver's process group, drop the caches so every name is looked
    // up again, and wait until a reader is blocked in the gap.
    d1.kill_group();
    let killed_at = Instant::now();
    drop_caches();
    readers.wait_blocked();
    let blocked_after = killed_at.elapsed();

    let mut d2 = n.spawn_driver("driver-2", &[]);
    let lines = d2.wait_serving();
    let serving_after = killed_at.elapsed();
    assert!(
        lines.contains(&took_over(3)),
        "the successor must print {:?} before serving: {lines:?}",
        took_over(3)
    );
    let now = readers.iterations();
    let more: Vec<u64> = now.iter().map(|i| i + MORE_ITERATIONS).collect();
    readers.wait_iterations("after the takeover", &more, DEADLINE);
    let report = readers.stop();
    eprintln!(
        "restart (sigkill): measured gap = max single-operation latency {:?} ({}); reader \
         seen blocked for {BLOCKED:?} at {blocked_after:?} after the kill; successor serving {serving_after:?} after the \
         kill; iterations {:?}",
        report.max_latency, report.slowest, report.iterations
    );
    assert_no_read_errors(&report);
    assert_eq!(mount_ids(&vols), ids, "a target was remounted");

    // After the takeover: rotation resumes, status lists every volume.
    rotate_and_wait(&cx, &mut vols[1], "password").await;
    assert_eq!(vols[1].read("user").unwrap(), vols[1].expected("user"));
    assert_status_lists(&n, &vols).await;

    // The predecessor's login tokens were handed over: the successor refetched and polled
    // every volume without logging in (the first driver logged in once per pod's JWT).
    let (log1, log2) = (d1.log(), d2.log());
    let logins = |log: &str| log.matches("logged in to OpenBao").count();
    assert!(logins(&log1) >= 1, "driver-1 log:\n{log1}");
    assert!(
        log2.contains("took over the predecessor's OpenBao login tokens"),
        "driver-2 log:\n{log2}"
    );
    assert_eq!(logins(&log2), 0, "driver-2 log:\n{log2}");

    let mut csi = d2.node().await;
    unpublish_all(&mut csi, &vols).await;
    d2.stop();
    n.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_in_flight_at_sigkill_completes_after_restart() {
    let Some(cx) = setup() else { return };
    cx.bao.ensure_jwt_auth().await;
    let mut n = Node::new("inflight");
    n.start_holder();
    let mut d1 = n.spawn_driver("driver-1", &[("BAOFS_FAULT_STALL_READ", "stall")]);
    d1.wait_serving();
    let mut csi = d1.node().await;
    let vol = publish_volume(&cx, &n, &mut csi, "v", &["other", "stall"]).await;
    assert_eq!(vol.read("other").unwrap(), vol.expected("other"));
    // The first read of `stall` sends a READ (nothing cached yet), which the driver swallows.
    let (tx, rx) = mpsc::channel();
    let stalled = vol.target.join("stall");
    let reader = thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(&stalled));
    });
    let line = "baofs: fault injection: stalling READ of stall";
    eventually("the driver to stall the READ", DEADLINE, || {
        d1.log().contains(line).then_some(())
    })
    .await;
    assert!(
        matches!(rx.try_recv(), Err(mpsc::TryRecvError::Empty)),
        "the stalled read returned before the kill"
    );

    d1.kill_group();
    let killed_at = Instant::now();
    let (release, resends) = kernel_resends();
    let mut d2 = n.spawn_driver("driver-2", &[]);
    let lines = d2.wait_serving();
    assert!(lines.contains(&took_over(1)), "{lines:?}");
    let result = rx.recv_timeout(IN_FLIGHT_DEADLINE).unwrap_or_else(|_| {
        panic!(
            "the read in flight at the SIGKILL did not complete within {IN_FLIGHT_DEADLINE:?} \
             of the restart (kernel {release}, FUSE_NOTIFY_RESEND {})",
            if resends { "available" } else { "missing" }
        )
    });
    reader.join().unwrap();
    eprintln!(
        "restart (in flight): the stalled read completed {:?} after the kill: {:?}",
        killed_at.elapsed(),
        result.as_ref().map(String::len)
    );
    if resends {
        assert_eq!(
            result.expect("the resent READ succeeds"),
            vol.expected("stall"),
            "the read in flight at the SIGKILL returns the right content"
        );
    } else {
        let e = result.expect_err("without FUSE_NOTIFY_RESEND the lost READ cannot succeed");
        eprintln!(
            "restart (in flight): kernel {release} < 6.9 has no FUSE_NOTIFY_RESEND, so the READ \
             the dead driver had taken cannot be resent; it completed with an error: {e}"
        );
    }
    vol.assert_readable();

    let mut csi = d2.node().await;
    unpublish_all(&mut csi, std::slice::from_ref(&vol)).await;
    d2.stop();
    n.teardown();
}

/// Waits until `a` hands over to `b` (just started) and exits 0. The contract: starting B
/// makes A hand over. A successor that instead announces it is "ready to take over ... on
/// SIGTERM" gets what a DaemonSet rolling update does next: kubelet's SIGTERM to the old pod.
/// Whether that SIGTERM was sent.
fn hand_off(a: &mut Driver, b: &mut Driver) -> bool {
    let handed = "baofs: handed over to a successor";
    let start = Instant::now();
    let mut sigtermed = false;
    while !a.stdout.iter().any(|l| l == handed) {
        while a.poll_line().is_some() {}
        if !sigtermed
            && let Some(line) = b.poll_line()
            && line.starts_with("baofs: ready to take over")
        {
            eprintln!(
                "restart (handoff): the successor printed {line:?}: sending SIGTERM to the \
                 running driver, as kubelet does in a rolling update"
            );
            terminate(a.child.as_mut().unwrap());
            sigtermed = true;
        }
        if let Some(status) = a.child.as_mut().unwrap().try_wait().unwrap() {
            a.rest_of_stdout();
            assert!(
                a.stdout.iter().any(|l| l == handed),
                "[driver-a] exited ({status}) without printing {handed:?}; stdout {:?}\nlog:\n{}",
                a.stdout,
                a.log()
            );
        }
        assert!(
            start.elapsed() < DEADLINE,
            "[driver-a] did not print {handed:?} within {DEADLINE:?} of the successor's start \
             (SIGTERM sent: {sigtermed}); A's stdout {:?}, B's stdout {:?}\nA's log:\n{}\nB's log:\n{}",
            a.stdout,
            b.stdout,
            a.log(),
            b.log()
        );
        thread::sleep(Duration::from_millis(5));
    }
    let status = a.wait_exit(DEADLINE);
    assert!(
        status.success(),
        "the predecessor exits 0 after the handoff ({status}); stdout {:?}\nlog:\n{}",
        a.rest_of_stdout(),
        a.log()
    );
    sigtermed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planned_handoff_measures_the_gap() {
    let Some(cx) = setup() else { return };
    cx.bao.ensure_jwt_auth().await;
    let mut n = Node::new("handoff");
    n.start_holder();
    let mut a = n.spawn_driver("driver-a", &[]);
    a.wait_serving();
    let mut csi = a.node().await;
    let vols = publish_readable(&cx, &n, &mut csi, 2).await;
    drop(csi);
    let ids = mount_ids(&vols);
    let readers = Readers::start(&vols);
    readers.wait_iterations("before the handoff", &[10, 10], DEADLINE);

    let started = Instant::now();
    let mut b = n.spawn_driver("driver-b", &[]);
    let sigtermed = hand_off(&mut a, &mut b);
    let lines = b.wait_serving();
    let serving_after = started.elapsed();
    assert!(lines.contains(&took_over(2)), "{lines:?}");
    let gap = lines
        .iter()
        .find_map(|l| l.strip_prefix("baofs: handoff gap "))
        .and_then(|l| l.strip_suffix(" ms"))
        .and_then(|x| x.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no `baofs: handoff gap <X> ms` line before serving: {lines:?}"));
    let now = readers.iterations();
    let more: Vec<u64> = now.iter().map(|i| i + MORE_ITERATIONS).collect();
    readers.wait_iterations("after the handoff", &more, DEADLINE);
    let report = readers.stop();
    eprintln!(
        "restart (handoff): successor's gap {gap} ms; readers' max single-operation latency {:?} \
         ({}); successor serving {serving_after:?} after it started; iterations {:?}; handoff \
         triggered by {}",
        report.max_latency,
        report.slowest,
        report.iterations,
        if sigtermed {
            "SIGTERM to the running driver"
        } else {
            "the successor's start alone"
        }
    );
    assert_no_read_errors(&report);
    assert_eq!(mount_ids(&vols), ids, "a target was remounted");

    // The successor serves CSI calls.
    let mut csi = b.node().await;
    let third = publish_volume(&cx, &n, &mut csi, "v2", &["password"]).await;
    third.assert_readable();
    unpublish_all(&mut csi, std::slice::from_ref(&third)).await;
    for v in &vols {
        v.assert_readable();
    }
    unpublish_all(&mut csi, &vols).await;
    b.stop();
    n.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holder_gone_too_cleans_dead_mounts() {
    let Some(cx) = setup() else { return };
    cx.bao.ensure_jwt_auth().await;
    let mut n = Node::new("noholder");
    n.start_holder();
    let mut d1 = n.spawn_driver("driver-1", &[]);
    d1.wait_serving();
    let mut csi = d1.node().await;
    let vols = publish_readable(&cx, &n, &mut csi, 2).await;
    drop(csi);

    d1.kill_group();
    n.kill_holder();
    let started = Instant::now();
    let mut d2 = n.spawn_driver("driver-2", &[]);
    let lines = d2.wait_serving();
    eprintln!(
        "restart (holder gone): the new driver served {:?} after it started",
        started.elapsed()
    );
    assert!(
        !lines.iter().any(|l| l.contains("took over")),
        "nothing can be taken over without the holder: {lines:?}"
    );
    let log = d2.log();
    for v in &vols {
        assert!(
            !is_mounted(&v.target),
            "{} is still a mount point",
            v.target.display()
        );
        if let Err(e) = std::fs::metadata(&v.target) {
            assert_ne!(
                e.raw_os_error(),
                Some(libc::ENOTCONN),
                "stat {}: {e}",
                v.target.display()
            );
        }
        let target = v.target.display().to_string();
        assert!(
            log.lines().any(|l| {
                l.contains("detached a volume of a dead baofs process") && l.contains(&target)
            }),
            "no detach line for {target}:\n{log}"
        );
    }
    let mut csi = d2.node().await;
    unpublish_all(&mut csi, &vols).await;
    d2.stop();
    n.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_holder_gets_the_hub_again() {
    let Some(cx) = setup() else { return };
    cx.bao.ensure_jwt_auth().await;
    let mut n = Node::new("reholder");
    n.start_holder();
    let mut d1 = n.spawn_driver("driver-1", &[]);
    d1.wait_serving();
    let mut csi = d1.node().await;
    let v = publish_volume(&cx, &n, &mut csi, "v0", &["password"]).await;
    drop(csi);

    // The holder dies and comes back empty while the driver keeps serving (it holds the
    // connection itself); the driver notices and hands the hub over again.
    n.kill_holder();
    v.assert_readable();
    n.start_holder();
    let sock = baofs::holder::socket_path(&n.state);
    let started = Instant::now();
    loop {
        let names = baofs::holder::list(&sock).unwrap_or_default();
        if names.iter().any(|x| x == "hub") && names.iter().any(|x| x == "credentials") {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the new holder never got the hub back: {names:?}\n{}",
            d1.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "restart (holder restarted): the new holder had the hub {:?} after it started",
        started.elapsed()
    );

    // So a driver crash now is survived as usual.
    d1.kill_group();
    let mut d2 = n.spawn_driver("driver-2", &[]);
    let lines = d2.wait_serving();
    assert!(lines.contains(&took_over(1)), "{lines:?}");
    v.assert_readable();
    let mut csi = d2.node().await;
    unpublish_all(&mut csi, std::slice::from_ref(&v)).await;
    d2.stop();
    n.teardown();
}

/// `psql` as the test PostgreSQL's superuser (started by scripts/test.sh): stdout.
fn psql(sql: &str) -> String {
    let env = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!("{k} is not set: run scripts/test.sh (it starts PostgreSQL)")
        })
    };
    let out = Command::new(env("BAOFS_TEST_PSQL"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &env("BAOFS_TEST_PG_PORT"),
            "-U",
            &env("BAOFS_TEST_PG_USER"),
        ])
        .args(["-d", "postgres", "-w", "-tA", "-c", sql])
        .env("PGPASSWORD", env("BAOFS_TEST_PG_PASSWORD"))
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn pg_role_exists(role: &str) -> bool {
    psql(&format!(
        "SELECT count(*) FROM pg_roles WHERE rolname = '{}'",
        role.replace('\'', "''")
    )) == "1"
}

/// Lease ids OpenBao holds under `prefix` (e.g. `db-…/creds/app`).
async fn bao_leases(cx: &Ctx, prefix: &str) -> Vec<String> {
    let (status, v) = cx
        .bao
        .call(
            reqwest::Method::from_bytes(b"LIST").unwrap(),
            &format!("sys/leases/lookup/{prefix}/"),
            None,
        )
        .await;
    if status == 404 {
        return Vec::new();
    }
    assert_eq!(status, 200, "list leases: {v}");
    v["data"]["keys"]
        .as_array()
        .map(|k| {
            k.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A database credential (a lease, from PostgreSQL through OpenBao's database engine) and a
/// PKI certificate (issued by a write, no lease) survive a SIGKILL of the driver unchanged: the
/// successor takes over the predecessor's responses and leases instead of issuing new ones (no
/// new credential in the pod, no lease left to its TTL), and still revokes the lease when the
/// volume is unpublished.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamic_secrets_are_handed_over_not_issued_again() {
    let Some(cx) = setup() else { return };
    cx.bao.ensure_jwt_auth().await;
    let post = reqwest::Method::POST;
    // PostgreSQL behind the database engine: a role with a 1 h lease (no renewal in this test).
    let db = unique("db");
    cx.bao
        .ok(
            post.clone(),
            &format!("sys/mounts/{db}"),
            Some(&json!({"type": "database"})),
        )
        .await;
    let pg_port =
        std::env::var("BAOFS_TEST_PG_PORT").expect("BAOFS_TEST_PG_PORT (scripts/test.sh)");
    cx.bao
        .ok(
            post.clone(),
            &format!("{db}/config/pg"),
            Some(&json!({
                "plugin_name": "postgresql-database-plugin",
                "allowed_roles": "*",
                "connection_url": format!(
                    "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{pg_port}/postgres?sslmode=disable"
                ),
                "username": std::env::var("BAOFS_TEST_PG_USER").expect("BAOFS_TEST_PG_USER"),
                "password": std::env::var("BAOFS_TEST_PG_PASSWORD").expect("BAOFS_TEST_PG_PASSWORD"),
            })),
        )
        .await;
    cx.bao
        .ok(
            post.clone(),
            &format!("{db}/roles/app"),
            Some(&json!({
                "db_name": "pg", "default_ttl": "1h", "max_ttl": "2h",
                "creation_statements": [
                    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
                ],
            })),
        )
        .await;
    // A PKI engine: `POST pki/issue/web` gives a certificate, kept for the volume's life.
    let pki = unique("pki");
    cx.bao
        .ok(
            post.clone(),
            &format!("sys/mounts/{pki}"),
            Some(&json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}})),
        )
        .await;
    cx.bao
        .ok(
            post.clone(),
            &format!("{pki}/root/generate/internal"),
            Some(&json!({"common_name": "baofs test root", "ttl": "87600h", "key_type": "ec"})),
        )
        .await;
    cx.bao
        .ok(post.clone(), &format!("{pki}/roles/web"), Some(&json!({"allowed_domains": "example.com", "allow_subdomains": true, "max_ttl": "72h", "key_type": "ec"})))
        .await;

    let sa = unique("sa");
    let pod = Pod::new(NS, &sa);
    let role = unique("role");
    cx.bao
        .role(&role, NS, &sa, &[format!("{db}/creds/app")])
        .await;
    let policy = format!(
        "path \"{db}/creds/app\" {{ capabilities = [\"read\"] }}\n\
         path \"{pki}/issue/web\" {{ capabilities = [\"update\"] }}\n\
         path \"sys/leases/renew\" {{ capabilities = [\"update\"] }}\n\
         path \"sys/leases/revoke\" {{ capabilities = [\"update\"] }}\n"
    );
    cx.bao
        .ok(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{role}"),
            Some(&json!({ "policy": policy })),
        )
        .await;

    let mut n = Node::new("dynamic");
    n.start_holder();
    let mut d1 = n.spawn_driver("driver-1", &[]);
    d1.wait_serving();
    let mut csi = d1.node().await;
    let spc = unique("spc-dyn");
    let objects = format!(
        "- objectName: user\n  secretPath: {db}/creds/app\n  secretKey: username\n\
         - objectName: password\n  secretPath: {db}/creds/app\n  secretKey: password\n\
         - objectName: tls.crt\n  secretPath: {pki}/issue/web\n  method: POST\n  secretKey: certificate\n  \
           secretArgs:\n    common_name: app.example.com\n    ttl: 1h\n"
    );
    write_spc(
        &n.spc_dir,
        NS,
        &spc,
        &[("vaultAddress", &cx.bao.addr), ("roleName", &role)],
        &objects,
    );
    let (id, target) = (volume_id(), n.target(&pod.uid, "dyn"));
    let req = publish_request(
        &id,
        &target,
        pod.context(&spc, Some(tokens_json(AUDIENCE, &pod.token()))),
    );
    csi.node_publish_volume(req)
        .await
        .unwrap_or_else(|e| panic!("publish: {e:?}"));
    drop(csi);
    let read = |f: &str| {
        std::fs::read_to_string(target.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"))
    };
    let (user, password, cert) = (read("user"), read("password"), read("tls.crt"));
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    assert!(
        pg_role_exists(&user),
        "the database credential {user} exists"
    );
    let leases = bao_leases(&cx, &format!("{db}/creds/app")).await;
    assert_eq!(leases.len(), 1, "{leases:?}");
    let issued = |log: &str| log.matches("issued a dynamic secret").count();
    assert_eq!(issued(&d1.log()), 2, "driver-1 log:\n{}", d1.log());

    // SIGKILL, restart: the same credential and certificate, nothing issued, one lease.
    d1.kill_group();
    let mut d2 = n.spawn_driver("driver-2", &[]);
    let lines = d2.wait_serving();
    assert!(lines.contains(&took_over(1)), "{lines:?}");
    assert_eq!(
        read("user"),
        user,
        "the credential changed across the restart"
    );
    assert_eq!(read("password"), password);
    assert_eq!(read("tls.crt"), cert, "the certificate was issued again");
    let log2 = d2.log();
    assert!(
        log2.contains("took over the predecessor's dynamic secrets and leases"),
        "driver-2 log:\n{log2}"
    );
    assert_eq!(issued(&log2), 0, "driver-2 log:\n{log2}");
    assert_eq!(bao_leases(&cx, &format!("{db}/creds/app")).await, leases);
    // A poll later (1 s) it still serves the handed-over values without issuing.
    eventually("a poll by driver-2", DEADLINE, || {
        d2.log().contains("poll: no change").then_some(())
    })
    .await;
    assert_eq!(read("user"), user);
    assert_eq!(issued(&d2.log()), 0, "driver-2 log:\n{}", d2.log());

    // A planned handoff to a third driver: the same again.
    let mut d3 = n.spawn_driver("driver-3", &[]);
    hand_off(&mut d2, &mut d3);
    let lines = d3.wait_serving();
    assert!(lines.contains(&took_over(1)), "{lines:?}");
    assert_eq!(
        read("user"),
        user,
        "the credential changed across the handoff"
    );
    assert_eq!(
        read("tls.crt"),
        cert,
        "the certificate was issued again at the handoff"
    );
    let log3 = d3.log();
    assert!(
        log3.contains("took over the predecessor's dynamic secrets and leases"),
        "driver-3 log:\n{log3}"
    );
    assert_eq!(issued(&log3), 0, "driver-3 log:\n{log3}");
    assert_eq!(bao_leases(&cx, &format!("{db}/creds/app")).await, leases);

    // The successor owns the lease: unpublishing revokes it and the role is dropped.
    let mut csi = d3.node().await;
    csi.node_unpublish_volume(unpublish_request(&id, &target))
        .await
        .unwrap_or_else(|e| panic!("unpublish: {e:?}"));
    assert!(
        bao_leases(&cx, &format!("{db}/creds/app")).await.is_empty(),
        "the lease was not revoked"
    );
    assert!(
        !pg_role_exists(&user),
        "the database role outlived the volume"
    );
    drop(d2);
    d3.stop();
    n.teardown();
}
