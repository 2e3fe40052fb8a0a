//! Read-path benchmark: baofs against tmpfs, measured in one run.
//!
//! Prints, side by side:
//! 1. open+read+close of a small secret through baofs and through a tmpfs file (1 and 2
//!    threads), and the ratio (target: baofs <= 1.3x tmpfs time per op);
//! 2. the first open+read+close of a new version after a rotation (a LOOKUP and a READ reach
//!    userspace);
//! 3. the delay from a completed poll to the new content being visible to a new open.
//!
//! Needs root, /dev/fuse and a real OpenBao: run `scripts/bench.sh` (starts one), or set
//! BAOFS_TEST_BAO_ADDR and BAOFS_TEST_BAO_TOKEN. `BENCH_SECONDS` sets the run time per case.
#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baofs::provider::openbao::OpenBaoConfig;
use baofs::provider::{OpenBaoProvider, Provider};
use baofs::publisher::{Publisher, PublisherConfig};
use baofs::secret::SecretString;
use baofs::spc::SecretProviderClass;
use baofs::volume::{Credentials, Ownership, PodInfo, VolumeSpec};

const SECRET_SIZE: usize = 256;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run scripts/bench.sh (it starts OpenBao)");
        std::process::exit(2)
    })
}

fn put_secret(addr: &str, token: &str, path: &str, value: &str) {
    let body = serde_json::json!({ "data": { "value": value } });
    let resp = reqwest::blocking::Client::new()
        .post(format!("{addr}/v1/secret/data/{path}"))
        .header("X-Vault-Token", token)
        .json(&body)
        .send()
        .unwrap();
    assert!(
        resp.status().is_success(),
        "writing secret: {}",
        resp.status()
    );
}

fn sys_mount(src: &str, target: &Path, fstype: &str, data: &str) {
    let s = CString::new(src).unwrap();
    let t = CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
    let f = CString::new(fstype).unwrap();
    let d = CString::new(data).unwrap();
    // SAFETY: valid NUL-terminated strings outliving the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, d.as_ptr().cast()) };
    assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
}

fn sys_umount(target: &Path) {
    let t = CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated string outliving the call.
    #[allow(unsafe_code)]
    unsafe {
        libc::umount2(t.as_ptr(), libc::MNT_DETACH);
    }
}

fn open_read_close(path: &Path, buf: &mut Vec<u8>) -> usize {
    buf.clear();
    let mut f = std::fs::File::open(path).unwrap();
    f.read_to_end(buf).unwrap()
}

/// ops/s of open+read+close of `path` on `threads` threads for `secs`.
fn throughput(path: &Path, threads: usize, secs: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let path = path.to_owned();
            std::thread::spawn(move || {
                let mut buf = Vec::with_capacity(4096);
                let mut ops = 0u64;
                while Instant::now() < deadline {
                    for _ in 0..256 {
                        assert_eq!(open_read_close(&path, &mut buf), SECRET_SIZE);
                    }
                    ops += 256;
                }
                ops
            })
        })
        .collect();
    let start = Instant::now();
    let ops: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    ops as f64 / start.elapsed().as_secs_f64().max(secs)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let addr = env("BAOFS_TEST_BAO_ADDR");
    let token = env("BAOFS_TEST_BAO_TOKEN");
    // `cargo bench` passes --bench; under `cargo test` this is a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { 3.0 } else { 0.2 });
    let work = PathBuf::from(format!("/tmp/baofs-bench-{}", std::process::id()));
    let (hub_dir, target, tmpfs) = (work.join("hub"), work.join("target"), work.join("tmpfs"));
    for d in [&hub_dir, &target, &tmpfs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let value = "s".repeat(SECRET_SIZE);
    put_secret(&addr, &token, "bench", &value);

    let spc = SecretProviderClass::from_yaml(&format!(
        r#"apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata: {{name: bench}}
spec:
  provider: openbao
  parameters:
    vaultAddress: {addr}
    roleName: bench
    objects: |
      - objectName: value
        secretPath: secret/data/bench
        secretKey: value
"#
    ))
    .unwrap();
    let spec = VolumeSpec {
        id: "bench".into(),
        spc,
        pod: PodInfo::default(),
        credentials: Credentials::Token(SecretString::new(token.clone())),
        ownership: Ownership::default(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let provider: Arc<dyn Provider> =
        Arc::new(OpenBaoProvider::new(OpenBaoConfig::default()).unwrap());
    let publisher = rt
        .block_on(async {
            Publisher::start(
                PublisherConfig {
                    state_dir: hub_dir.clone(),
                    rotation: Some(Duration::from_secs(3600)),
                    fuse_threads: 2,
                    create_missing_targets: false,
                },
                provider,
                Arc::new(baofs::observer::NoObserver),
            )
        })
        .unwrap();
    rt.block_on(publisher.publish(spec, &target)).unwrap();
    sys_mount("tmpfs", &tmpfs, "tmpfs", "size=1m");
    std::fs::write(tmpfs.join("value"), &value).unwrap();

    let (baofs_file, tmpfs_file) = (target.join("value"), tmpfs.join("value"));
    let mut buf = Vec::new();
    open_read_close(&baofs_file, &mut buf); // warm the dentry and page cache
    open_read_close(&tmpfs_file, &mut buf);

    println!("# baofs read-path benchmark ({SECRET_SIZE}-byte secret, {secs} s per case)");
    println!(
        "{:<34} {:>14} {:>14} {:>8}",
        "case", "tmpfs ops/s", "baofs ops/s", "ratio"
    );
    for threads in [1, 2] {
        let t = throughput(&tmpfs_file, threads, secs);
        let before = publisher.request_counts().unwrap();
        let b = throughput(&baofs_file, threads, secs);
        let after = publisher.request_counts().unwrap();
        let requests: u64 = after.iter().zip(before).map(|(a, b)| a - b).sum();
        println!(
            "{:<34} {:>14.0} {:>14.0} {:>7.2}x   ({requests} FUSE requests reached userspace)",
            format!("open+read+close, {threads} thread(s)"),
            t,
            b,
            t / b
        );
    }

    // Rotations: first read of a new version, and poll-complete -> visible delay.
    let mut first_reads = Vec::new();
    let mut visible_after = Vec::new();
    for i in 0..(if full { 50 } else { 5 }) {
        let next = format!("{:0>width$}", i, width = SECRET_SIZE);
        put_secret(&addr, &token, "bench", &next);
        let changed = rt.block_on(publisher.poll_now(&target)).unwrap().unwrap();
        assert_eq!(changed, ["value"]);
        let polled = Instant::now();
        let t0 = Instant::now();
        open_read_close(&baofs_file, &mut buf);
        first_reads.push(t0.elapsed());
        assert_eq!(
            buf,
            next.as_bytes(),
            "new open after a completed poll saw the old version"
        );
        visible_after.push(polled.elapsed());
    }
    first_reads.sort();
    visible_after.sort();
    println!(
        "first open+read+close of a new version: p50 {:?}, p99 {:?} (tmpfs-equivalent: a rewrite)",
        percentile(&first_reads, 0.5),
        percentile(&first_reads, 0.99)
    );
    println!(
        "poll completed -> new content read by a new open: p50 {:?}, max {:?} ({} rotations, 0 stale)",
        percentile(&visible_after, 0.5),
        percentile(&visible_after, 1.0),
        visible_after.len()
    );

    rt.block_on(publisher.shutdown());
    sys_umount(&tmpfs);
    let _ = std::fs::remove_dir_all(&work);
}
