//! Restart survival at scale (issue 7): real `baofs holder` and `baofs csi --spc-dir` processes,
//! a tonic CSI client on the driver's socket, real FUSE mounts and a real OpenBao.
//!
//! `BENCH_VOLUMES` (default 1000; 20 under `cargo test`) volumes of 3 objects of ~1 KiB, one pod
//! per volume (its own service-account JWT, as kubelet sends it), pods spread over
//! `BENCH_SERVICE_ACCOUNTS` (default 10) service accounts and `BENCH_SPCS` SPCs (default one per
//! 10 volumes, at least one per service account; every SPC has its own 3 secrets). Prints:
//!
//! 1. publish of every volume through CSI, one after the other: total, p50/p99/max; the
//!    driver's RSS and threads;
//! 2. crash: readers loop on a sample of `BENCH_READERS` (default 20) volumes (read a file and
//!    compare, `stat` a missing name, which reaches the daemon every time); the driver's process
//!    group is SIGKILLed and a new driver started at once. Kill → `took over N` and → `serving
//!    CSI`; kill → a first-time `stat` of a missing name on the last-published volume returns;
//!    the readers' max latency and failures; OpenBao requests between the kill and `took over`
//!    (OpenBao's file audit log); then every file of every volume is read and compared (the
//!    third file of each volume for the first time, so its READ reaches the new driver);
//! 3. planned handoff: a second driver, its `ready to take over` line (prefetch of every volume)
//!    after its start, SIGTERM to the first, the successor's `handoff gap` line, the readers'
//!    max latency and failures, OpenBao requests of the handoff;
//! 4. cleanup: unpublish every volume through CSI, stop driver and holder, no mount left.
//!
//! It asserts correctness only (no failed or wrong read, no target remounted, the expected
//! lines, nothing left mounted), never a timing.
//!
//! Needs root, /dev/fuse and `BAOFS_TEST_BAO_BIN`: it starts its own dev OpenBao with a file
//! audit device (declared in its config: OpenBao refuses audit devices made through the API),
//! jwt auth at `kubernetes`. `scripts/bench.sh takeover` installs OpenBao and sets it; `cargo
//! test --all-targets` (scripts/test.sh) runs the smoke size. `BENCH_LOG` sets the drivers'
//! `--log-level` (default `info`); their logs are kept under the work dir when
//! `BENCH_KEEP_LOGS=1` (the path is printed).
#![allow(clippy::unwrap_used)]

#[path = "common/audited_bao.rs"]
mod audited_bao;
#[path = "../tests/common/bao.rs"]
mod bao;
#[path = "../tests/common/csi_fixture.rs"]
mod fixture;
#[path = "../tests/common/process.rs"]
mod process;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use baofs_csi::v1::node_client::NodeClient;
use tonic::transport::Channel;

use audited_bao::AuditedBao;
use bao::Bao;
use fixture::{
    AUDIENCE, NODE_ID, Pod, TempDir, connect, is_mounted, kubelet_target, mounts_under,
    publish_request, tokens_json, unique, unpublish_request, volume_id, write_spc,
};
use process::{read_lossy, spawn_holder, stop, terminate, wait_exit};

const NS: &str = "bench";
const FILES: [&str; 3] = ["a", "b", "c"];
/// Generous bound for every wait (a prefetch of 1000 volumes included).
const DEADLINE: Duration = Duration::from_secs(300);
/// Iterations every reader completes after a new driver serves, before its figures are taken.
const MORE_ITERATIONS: u64 = 50;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run scripts/bench.sh takeover (it installs OpenBao)");
        std::process::exit(2)
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// (VmRSS in KiB, threads) of `pid`.
fn rss_threads(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
}

fn describe_process(pid: u32) -> String {
    let (rss, threads) = rss_threads(pid);
    format!("RSS {:.1} MiB, {threads} threads", rss as f64 / 1024.0)
}

fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("write /proc/sys/vm/drop_caches");
}

/// Every target still has the mount it had in `before` (same mount id: not remounted).
fn assert_not_remounted(vols: &[Vol], before: &HashMap<PathBuf, u64>) {
    let after = mount_ids();
    for v in vols {
        assert_eq!(
            after.get(&v.target),
            before.get(&v.target),
            "{} was remounted",
            v.target.display()
        );
    }
}

/// Mount ids (first mountinfo field) by mount point.
fn mount_ids() -> HashMap<PathBuf, u64> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let id = f.next()?.parse().ok()?;
            Some((PathBuf::from(f.nth(3)?), id))
        })
        .collect()
}

// -------------------------------------------------------------------------------------------
// The node: holder, drivers, SPC dir, CSI socket

struct Node {
    dir: TempDir,
    socket: PathBuf,
    spc_dir: PathBuf,
    state: PathBuf,
    log_level: String,
    holder: Option<Child>,
    holder_log: PathBuf,
    keep_logs: bool,
}

impl Node {
    fn new(keep_logs: bool) -> Self {
        let dir = TempDir::new("takeover");
        let spc_dir = dir.path.join("spc");
        std::fs::create_dir_all(&spc_dir).unwrap();
        Self {
            socket: dir.path.join("plugin/csi.sock"),
            state: dir.path.join("state"),
            holder_log: dir.path.join("holder.log"),
            log_level: std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".to_owned()),
            spc_dir,
            dir,
            holder: None,
            keep_logs,
        }
    }

    fn start_holder(&mut self) {
        self.holder = Some(spawn_holder(&self.state, &self.holder_log, DEADLINE));
    }

    fn holder_pid(&self) -> u32 {
        self.holder.as_ref().unwrap().id()
    }

    /// Spawns `baofs csi` in its own process group; stdout lines arrive with their time.
    fn spawn_driver(&self, label: &str) -> Driver {
        let stderr = self.dir.path.join(format!("{label}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_baofs"))
            .args(["--log-level", &self.log_level, "csi", "--nodeid", NODE_ID])
            .arg(format!("--endpoint=unix://{}", self.socket.display()))
            .arg("--spc-dir")
            .arg(&self.spc_dir)
            .arg("--state-dir")
            .arg(&self.state)
            .args([
                "--metrics-addr=",
                "--enable-secret-rotation=true",
                "--rotation-poll-interval=2m",
            ])
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .env_remove("RUST_LOG")
            .env_remove("BAOFS_FAULT_STALL_READ")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .process_group(0)
            .spawn()
            .expect("spawn baofs csi");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Driver {
            label: label.to_owned(),
            pid: child.id(),
            child: Some(child),
            lines: rx,
            stdout: Vec::new(),
            log: stderr,
            socket: self.socket.clone(),
        }
    }

    fn target(&self, pod_uid: &str) -> PathBuf {
        kubelet_target(&self.dir.path, pod_uid, "secrets")
    }

    /// Unmounts the hub a driver left to the holder (nothing else may be left), then stops
    /// the holder; nothing may stay mounted.
    fn teardown(&mut self) {
        let left = mounts_under(&self.dir.path);
        for (mp, fstype) in &left {
            assert!(
                mp.starts_with(&self.state),
                "only the hub may outlive the driver, found {mp:?} ({fstype})"
            );
            detach(mp);
        }
        let mut holder = self.holder.take().unwrap();
        let status = stop(&mut holder, Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "baofs holder did not exit cleanly ({status:?}):\n{}",
            read_lossy(&self.holder_log)
        );
        let left = mounts_under(&self.dir.path);
        assert!(left.is_empty(), "mounts left: {left:?}");
    }
}

impl Drop for Node {
    /// After a failure: detach whatever is left, stop the holder.
    fn drop(&mut self) {
        for (mp, _) in mounts_under(&self.dir.path) {
            detach(&mp);
        }
        if let Some(mut child) = self.holder.take() {
            stop(&mut child, Duration::from_secs(30));
        }
        if self.keep_logs {
            // TempDir removes the directory: keep the logs next to it.
            let keep = self.dir.path.with_extension("logs");
            let _ = std::fs::create_dir_all(&keep);
            for entry in std::fs::read_dir(&self.dir.path).into_iter().flatten() {
                let p = entry.unwrap().path();
                if p.extension().is_some_and(|e| e == "log") {
                    let _ = std::fs::copy(&p, keep.join(p.file_name().unwrap()));
                }
            }
            println!("logs kept in {}", keep.display());
        }
    }
}

/// umount2(MNT_DETACH): never blocks on a connection nobody serves.
#[allow(unsafe_code)]
fn detach(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

#[allow(unsafe_code)]
fn kill_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; `pgid` is the group of a child we
    // spawned with process_group(0) and have not reaped yet.
    unsafe { libc::kill(-(pgid as libc::pid_t), sig) };
}

/// One `baofs csi` process.
struct Driver {
    label: String,
    pid: u32,
    child: Option<Child>,
    lines: mpsc::Receiver<(Instant, String)>,
    stdout: Vec<String>,
    log: PathBuf,
    socket: PathBuf,
}

impl Driver {
    /// Waits for a stdout line satisfying `pred`; returns it with its arrival time.
    fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> (Instant, String) {
        let start = Instant::now();
        loop {
            match self
                .lines
                .recv_timeout(DEADLINE.saturating_sub(start.elapsed()))
            {
                Ok((at, line)) => {
                    self.stdout.push(line.clone());
                    if pred(&line) {
                        return (at, line);
                    }
                }
                Err(e) => panic!(
                    "[{}] no stdout line {what} ({e:?}); stdout {:?}\nlog:\n{}",
                    self.label,
                    self.stdout,
                    read_lossy(&self.log)
                ),
            }
        }
    }

    fn wait_serving(&mut self) -> Instant {
        let line = format!("baofs: serving CSI on {}", self.socket.display());
        self.wait_line(&format!("{line:?}"), |l| l == line).0
    }

    async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(connect(&self.socket).await.unwrap())
    }

    /// SIGKILL to the process group; returns once it is reaped and the group is empty.
    #[allow(unsafe_code)]
    fn kill_group(&mut self) {
        let mut child = self.child.take().unwrap();
        kill_group(self.pid, libc::SIGKILL);
        child.wait().unwrap();
        let start = Instant::now();
        // SAFETY: kill(2) with signal 0 only checks for existence.
        while unsafe { libc::kill(-(self.pid as libc::pid_t), 0) } == 0 {
            assert!(start.elapsed() < DEADLINE, "the process group lingers");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGTERM; asserts exit 0 within the deadline.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        terminate(&mut child);
        let status = wait_exit(&mut child, DEADLINE);
        if status.is_none() {
            kill_group(self.pid, libc::SIGKILL);
            let _ = child.wait();
        }
        assert!(
            status.is_some_and(|s| s.success()),
            "[{}] did not exit 0 on SIGTERM ({status:?}):\n{}",
            self.label,
            read_lossy(&self.log)
        );
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
            if wait_exit(&mut child, Duration::from_secs(30)).is_none() {
                kill_group(self.pid, libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Volumes

struct Vol {
    id: String,
    target: PathBuf,
    spc: usize,
}

/// The content of file `f` of SPC `spc`: ~1 KiB, distinct per secret.
fn content(run: &str, spc: usize, f: &str) -> String {
    let head = format!("{run}-{spc}-{f}:");
    format!("{head}{}", "x".repeat(1024 - head.len()))
}

/// Reads and compares every file of every volume; returns the time it took.
fn check_all(vols: &[Vol], run: &str) -> Duration {
    let start = Instant::now();
    for v in vols {
        for f in FILES {
            let p = v.target.join(f);
            let got =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            assert!(got == content(run, v.spc, f), "wrong content in {p:?}");
        }
    }
    start.elapsed()
}

// -------------------------------------------------------------------------------------------
// Readers looping on a sample of volumes

#[derive(Default)]
struct ReaderStats {
    iterations: AtomicU64,
    max_latency_us: AtomicU64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

struct Readers {
    stop: Arc<AtomicBool>,
    stats: Vec<Arc<ReaderStats>>,
    handles: Vec<JoinHandle<()>>,
}

struct Report {
    max_latency: Duration,
    errors: u64,
    first_errors: Vec<String>,
    iterations: u64,
}

impl Readers {
    /// One thread per volume: read file `a` and compare, `stat` a missing name.
    fn start(vols: &[&Vol], run: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut stats = Vec::new();
        let mut handles = Vec::new();
        for v in vols {
            let s = Arc::new(ReaderStats::default());
            stats.push(Arc::clone(&s));
            let (file, missing) = (v.target.join("a"), v.target.join("no-such-file"));
            let expected = content(run, v.spc, "a");
            let stop = Arc::clone(&stop);
            handles.push(thread::spawn(move || {
                let fail = |what: String| {
                    s.errors.fetch_add(1, Ordering::SeqCst);
                    let mut first = s.first_errors.lock().unwrap();
                    if first.len() < 5 {
                        first.push(what);
                    }
                };
                let timed = |f: &mut dyn FnMut()| {
                    let t0 = Instant::now();
                    f();
                    s.max_latency_us
                        .fetch_max(t0.elapsed().as_micros() as u64, Ordering::SeqCst);
                };
                while !stop.load(Ordering::SeqCst) {
                    timed(&mut || match std::fs::read_to_string(&file) {
                        Ok(got) if got == expected => {}
                        Ok(_) => fail(format!("read {}: wrong content", file.display())),
                        Err(e) => fail(format!("read {}: {e}", file.display())),
                    });
                    timed(&mut || match std::fs::metadata(&missing) {
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => fail(format!("stat {}: {e}", missing.display())),
                        Ok(_) => fail(format!("stat {}: exists", missing.display())),
                    });
                    s.iterations.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        Self {
            stop,
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

    /// Waits until every reader did `more` iterations from now.
    fn wait_more(&self, more: u64) {
        let target: Vec<u64> = self.iterations().iter().map(|i| i + more).collect();
        let start = Instant::now();
        while !self.iterations().iter().zip(&target).all(|(a, b)| a >= b) {
            assert!(
                start.elapsed() < DEADLINE,
                "readers stalled at {:?}",
                self.iterations()
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// The figures since the previous report (max latency and errors are reset).
    fn report(&self) -> Report {
        let mut r = Report {
            max_latency: Duration::ZERO,
            errors: 0,
            first_errors: Vec::new(),
            iterations: self.iterations().iter().sum(),
        };
        for s in &self.stats {
            r.max_latency = r.max_latency.max(Duration::from_micros(
                s.max_latency_us.swap(0, Ordering::SeqCst),
            ));
            r.errors += s.errors.swap(0, Ordering::SeqCst);
            r.first_errors
                .extend(std::mem::take(&mut *s.first_errors.lock().unwrap()));
        }
        r
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in std::mem::take(&mut self.handles) {
            h.join().unwrap();
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn assert_no_errors(what: &str, r: &Report) {
    assert!(
        r.errors == 0,
        "{what}: readers saw {} errors: {:?}",
        r.errors,
        r.first_errors
    );
}

// -------------------------------------------------------------------------------------------

fn main() {
    if std::env::var("BAOFS_SKIP_FUSE").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: BAOFS_SKIP_FUSE=1 (the takeover bench needs FUSE and OpenBao)");
        return;
    }
    // `cargo bench` passes --bench; under `cargo test` this is a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let n = env_or("BENCH_VOLUMES", if full { 1000 } else { 20 }).max(1);
    let sas = env_or("BENCH_SERVICE_ACCOUNTS", 10).clamp(1, n);
    let spcs = env_or("BENCH_SPCS", (n / 10).max(sas)).clamp(sas, n);
    let sample = env_or("BENCH_READERS", 20).clamp(1, n);
    let keep_logs = std::env::var("BENCH_KEEP_LOGS").is_ok_and(|v| v == "1");
    assert_eq!(
        uid(),
        0,
        "the takeover bench mounts FUSE volumes: run it as root (scripts/bench.sh takeover)"
    );
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut node = Node::new(keep_logs);
    let bao_dir = node.dir.path.join("openbao");
    std::fs::create_dir_all(&bao_dir).unwrap();
    let audited = AuditedBao::start(&required_env("BAOFS_TEST_BAO_BIN"), &bao_dir);
    let bao = Bao::new(&audited.addr, "root");
    let run = unique("tk");

    // OpenBao: jwt auth, one role per service account, 3 secrets per SPC.
    let setup_start = Instant::now();
    rt.block_on(async {
        bao.ensure_jwt_auth().await;
        for k in 0..sas {
            bao.role(
                &format!("{run}-sa{k}"),
                NS,
                &format!("sa{k}"),
                &[format!("secret/data/{run}-*")],
            )
            .await;
        }
        for j in 0..spcs {
            for f in FILES {
                bao.kv2_put(
                    &format!("{run}-{j}-{f}"),
                    serde_json::json!({ "value": content(&run, j, f) }),
                )
                .await;
            }
        }
    });
    for j in 0..spcs {
        let objects: String = FILES
            .iter()
            .map(|f| {
                format!("- objectName: {f}\n  secretPath: secret/data/{run}-{j}-{f}\n  secretKey: value\n")
            })
            .collect();
        write_spc(
            &node.spc_dir,
            NS,
            &format!("spc{j}"),
            &[
                ("vaultAddress", &audited.addr),
                ("roleName", &format!("{run}-sa{}", j % sas)),
            ],
            &objects,
        );
    }
    // One pod (and JWT) per volume, signed ahead (openssl, in parallel).
    let pods: Vec<(Pod, String)> = {
        let per = n.div_ceil(4);
        let chunks: Vec<Vec<usize>> = (0..n)
            .collect::<Vec<_>>()
            .chunks(per)
            .map(<[usize]>::to_vec)
            .collect();
        thread::scope(|s| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|c| {
                    s.spawn(move || {
                        c.into_iter()
                            .map(|i| {
                                let pod = Pod::new(NS, &format!("sa{}", (i % spcs) % sas));
                                let token = pod.token();
                                (pod, token)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        })
    };
    let setup_time = setup_start.elapsed();

    println!(
        "# baofs takeover benchmark: {n} volumes x 3 objects x 1 KiB, {spcs} SPCs ({} distinct \
         secrets), {sas} service accounts, one pod (JWT) per volume; real baofs holder + baofs \
         csi processes, OpenBao on loopback with a file audit device (setup {:.1} s)",
        spcs * 3,
        setup_time.as_secs_f64()
    );

    node.start_holder();
    let mut d1 = node.spawn_driver("driver-1");
    d1.wait_serving();

    // 1. Publish.
    let mut vols = Vec::with_capacity(n);
    let mut latencies = Vec::with_capacity(n);
    let audit_before_publish = audited.offset();
    let started = Instant::now();
    rt.block_on(async {
        let mut csi = d1.node().await;
        for (i, (pod, token)) in pods.iter().enumerate() {
            let spc = i % spcs;
            let vol = Vol {
                id: volume_id(),
                target: node.target(&pod.uid),
                spc,
            };
            let req = publish_request(
                &vol.id,
                &vol.target,
                pod.context(&format!("spc{spc}"), Some(tokens_json(AUDIENCE, token))),
            );
            let t0 = Instant::now();
            csi.node_publish_volume(req)
                .await
                .unwrap_or_else(|e| panic!("publish {i}: {e:?}"));
            latencies.push(t0.elapsed());
            vols.push(vol);
        }
    });
    let publish_all = started.elapsed();
    latencies.sort();
    let publish_counts = audited.counts_since(audit_before_publish, &run);
    println!(
        "1. publish {n} volumes (one after the other): all {:.2} s, p50 {}, p99 {}, max {}; \
         OpenBao: {publish_counts}",
        publish_all.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
    );
    println!(
        "   driver after publishing: {}; holder: {}",
        describe_process(d1.pid),
        describe_process(node.holder_pid())
    );
    for v in &vols {
        assert!(is_mounted(&v.target), "{} not mounted", v.target.display());
    }
    let ids_before = mount_ids();
    // Files a and b of every volume: c is first read after the crash, from the new driver.
    let t0 = Instant::now();
    for v in &vols {
        for f in &FILES[..2] {
            assert_eq!(
                std::fs::read_to_string(v.target.join(f)).unwrap(),
                content(&run, v.spc, f)
            );
        }
    }
    println!(
        "   first read of files a and b of every volume: {} ({} files)",
        ms(t0.elapsed()),
        2 * n
    );

    // 2. Crash.
    let sampled: Vec<&Vol> = (0..sample)
        .map(|k| &vols[(k * n / sample + (n / sample).saturating_sub(1)).min(n - 1)])
        .collect();
    let readers = Readers::start(&sampled, &run);
    readers.wait_more(10);
    readers.report();
    let last = vols.last().unwrap().target.join(unique("never-looked-up"));
    let audit_at_kill = audited.offset();
    let killed_at = Instant::now();
    d1.kill_group();
    let group_gone = killed_at.elapsed();
    let (probe_tx, probe_rx) = mpsc::channel();
    thread::spawn(move || {
        let r = std::fs::metadata(&last);
        let _ = probe_tx.send((killed_at.elapsed(), r.map(|_| ())));
    });
    let mut d2 = node.spawn_driver("driver-2");
    let (took_at, took) = d2.wait_line("\"baofs: took over ...\"", |l| {
        l.starts_with("baofs: took over")
    });
    let takeover_counts = audited.counts_since(audit_at_kill, &run);
    assert_eq!(
        took,
        format!("baofs: took over {n} volumes"),
        "the successor takes over every volume"
    );
    let serving_at = d2.wait_serving();
    let (probe_after, probe) = probe_rx.recv_timeout(DEADLINE).unwrap();
    assert!(
        matches!(&probe, Err(e) if e.kind() == ErrorKind::NotFound),
        "stat of a missing name on the last volume: {probe:?}"
    );
    readers.wait_more(MORE_ITERATIONS);
    let crash = readers.report();
    println!(
        "2. crash (SIGKILL of the driver's process group, restart at once): group gone {}; \
         took over {n} volumes {} after the kill, serving CSI {}",
        ms(group_gone),
        ms(took_at - killed_at),
        ms(serving_at - killed_at)
    );
    println!(
        "   first-time stat of a missing name on the last-published volume returned {} after \
         the kill",
        ms(probe_after)
    );
    println!(
        "   readers on {sample} volumes: max latency {}, failed {} ({} iterations in all)",
        ms(crash.max_latency),
        crash.errors,
        crash.iterations
    );
    println!("   OpenBao requests between the kill and `took over`: {takeover_counts}");
    println!("   driver after the takeover: {}", describe_process(d2.pid));
    assert_no_errors("crash", &crash);
    assert_not_remounted(&vols, &ids_before);
    readers.stop();
    let checked = check_all(&vols, &run);
    println!(
        "   every file of every volume read and correct after the takeover ({} files, c for \
         the first time): {}",
        3 * n,
        ms(checked)
    );

    // 3. Planned handoff.
    let readers = Readers::start(&sampled, &run);
    readers.wait_more(10);
    let audit_at_start = audited.offset();
    let started = Instant::now();
    let mut d3 = node.spawn_driver("driver-3");
    let (ready_at, _) = d3.wait_line("\"baofs: ready to take over ...\"", |l| {
        l.starts_with("baofs: ready to take over")
    });
    let prefetch_counts = audited.counts_since(audit_at_start, &run);
    let prefetching = readers.report();
    let audit_at_term = audited.offset();
    let term_at = Instant::now();
    terminate(d2.child.as_mut().unwrap());
    d2.wait_line("\"baofs: handed over to a successor\"", |l| {
        l == "baofs: handed over to a successor"
    });
    let status = wait_exit(d2.child.as_mut().unwrap(), DEADLINE);
    assert!(
        status.is_some_and(|s| s.success()),
        "the predecessor exits 0 after handing over: {status:?}"
    );
    d2.child = None;
    let (_, took) = d3.wait_line("\"baofs: took over ...\"", |l| {
        l.starts_with("baofs: took over")
    });
    assert_eq!(took, format!("baofs: took over {n} volumes"));
    let (_, gap) = d3.wait_line("\"baofs: handoff gap ...\"", |l| {
        l.starts_with("baofs: handoff gap")
    });
    let serving_at = d3.wait_serving();
    let handoff_counts = audited.counts_since(audit_at_term, &run);
    readers.wait_more(MORE_ITERATIONS);
    let handoff = readers.report();
    println!(
        "3. planned handoff: successor ready {:.2} s after its start (prefetch of {n} volumes; \
         OpenBao: {prefetch_counts})",
        (ready_at - started).as_secs_f64()
    );
    println!(
        "   readers during the prefetch: max latency {}, failed {}",
        ms(prefetching.max_latency),
        prefetching.errors
    );
    println!(
        "   SIGTERM to the running driver -> successor serving CSI {}; successor printed {gap:?}",
        ms(serving_at - term_at)
    );
    println!(
        "   readers on {sample} volumes during the handoff: max latency {}, failed {}",
        ms(handoff.max_latency),
        handoff.errors
    );
    println!("   OpenBao requests from the SIGTERM to serving: {handoff_counts}");
    println!("   driver after the handoff: {}", describe_process(d3.pid));
    assert_no_errors("prefetch", &prefetching);
    assert_no_errors("handoff", &handoff);
    readers.stop();
    assert_not_remounted(&vols, &ids_before);
    drop_caches();
    let checked = check_all(&vols, &run);
    println!(
        "   every file of every volume read and correct after the handoff (caches dropped): {}",
        ms(checked)
    );

    // 4. Cleanup.
    let t0 = Instant::now();
    rt.block_on(async {
        let mut csi = d3.node().await;
        for v in &vols {
            csi.node_unpublish_volume(unpublish_request(&v.id, &v.target))
                .await
                .unwrap_or_else(|e| panic!("unpublish {}: {e:?}", v.target.display()));
        }
    });
    let unpublished = t0.elapsed();
    for v in &vols {
        assert!(
            !is_mounted(&v.target),
            "{} still mounted",
            v.target.display()
        );
    }
    d3.stop();
    node.teardown();
    println!(
        "4. unpublish all {n} through CSI: {:.2} s; driver and holder stopped; no mount left",
        unpublished.as_secs_f64()
    );
}

/// The uid this process runs as.
fn uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}
