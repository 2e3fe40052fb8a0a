//! Scale benchmark: many volumes on one hub, in one process.
//!
//! Publishes `BENCH_VOLUMES` (default 1000) volumes of 3 objects of 1 KiB each (one SPC, one
//! token) through the same `Publisher` the CSI server uses, then prints publish latency
//! (p50/p99/max), resident memory and threads of the process, the hot-read ratio against tmpfs
//! with every volume mounted, and unpublish time; it checks that unpublishing all leaves no mount.
//!
//! Needs root, /dev/fuse and a real OpenBao: `scripts/bench.sh scale`. Fetches are not shared
//! between volumes yet (scale issue), so each publish reads its 3 objects from OpenBao.
#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baofs::observer::NoObserver;
use baofs::provider::openbao::OpenBaoConfig;
use baofs::provider::{OpenBaoProvider, Provider};
use baofs::publisher::{Publisher, PublisherConfig};
use baofs::secret::SecretString;
use baofs::spc::SecretProviderClass;
use baofs::volume::{Credentials, Ownership, PodInfo, VolumeSpec};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run scripts/bench.sh scale (it starts OpenBao)");
        std::process::exit(2)
    })
}

fn proc_status(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn mounts_under(dir: &Path) -> usize {
    let dir = format!("{}/", dir.to_string_lossy());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)))
        .count()
}

fn read_file(path: &Path, buf: &mut Vec<u8>) -> usize {
    buf.clear();
    std::fs::File::open(path).unwrap().read_to_end(buf).unwrap()
}

fn ops_per_sec(paths: &[PathBuf], secs: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut buf = Vec::with_capacity(2048);
    let (mut ops, start) = (0u64, Instant::now());
    while Instant::now() < deadline {
        for p in paths.iter().take(256) {
            read_file(p, &mut buf);
        }
        ops += paths.len().min(256) as u64;
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let addr = env("BAOFS_TEST_BAO_ADDR");
    let token = env("BAOFS_TEST_BAO_TOKEN");
    // `cargo bench` passes --bench; under `cargo test` this is a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("BENCH_VOLUMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { 1000 } else { 20 });
    let hot_secs = if full { 2.0 } else { 0.2 };
    let work = PathBuf::from(format!("/tmp/baofs-scale-{}", std::process::id()));
    let (state, targets, tmpfs) = (work.join("state"), work.join("t"), work.join("tmpfs"));
    for d in [&state, &targets, &tmpfs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let kib = "k".repeat(1024);
    let client = reqwest::blocking::Client::new();
    for key in ["a", "b", "c"] {
        let resp = client
            .post(format!("{addr}/v1/secret/data/scale-{key}"))
            .header("X-Vault-Token", &token)
            .json(&serde_json::json!({ "data": { "value": kib } }))
            .send()
            .unwrap();
        assert!(resp.status().is_success());
    }
    let spc = SecretProviderClass::from_yaml(&format!(
        r#"apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata: {{name: scale, namespace: bench}}
spec:
  provider: openbao
  parameters:
    vaultAddress: {addr}
    roleName: bench
    objects: |
      - {{objectName: a, secretPath: secret/data/scale-a, secretKey: value}}
      - {{objectName: b, secretPath: secret/data/scale-b, secretKey: value}}
      - {{objectName: c, secretPath: secret/data/scale-c, secretKey: value}}
"#
    ))
    .unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let provider: Arc<dyn Provider> =
        Arc::new(OpenBaoProvider::new(OpenBaoConfig::default()).unwrap());
    let publisher = rt
        .block_on(async {
            Publisher::start(
                PublisherConfig {
                    state_dir: state.clone(),
                    rotation: Some(Duration::from_secs(120)),
                    fuse_threads: 2,
                    create_missing_targets: true,
                },
                provider,
                Arc::new(NoObserver),
            )
        })
        .unwrap();
    let rss_before = proc_status("VmRSS:");

    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let spec = VolumeSpec {
            id: format!("csi-{i:06}"),
            spc: spc.clone(),
            pod: PodInfo::default(),
            credentials: Credentials::Token(SecretString::new(token.clone())),
            ownership: Ownership::default(),
        };
        let t0 = Instant::now();
        rt.block_on(publisher.publish(spec, &targets.join(i.to_string())))
            .unwrap();
        latencies.push(t0.elapsed());
    }
    let publish_all = started.elapsed();
    latencies.sort();

    // Every file of every volume, read once (first reads: LOOKUP + READ reach userspace).
    let files: Vec<PathBuf> = (0..n)
        .flat_map(|i| ["a", "b", "c"].map(|f| targets.join(i.to_string()).join(f)))
        .collect();
    let mut buf = Vec::new();
    let t0 = Instant::now();
    for f in &files {
        assert_eq!(read_file(f, &mut buf), 1024);
    }
    let first_reads = t0.elapsed();
    let rss = proc_status("VmRSS:");
    let threads = proc_status("Threads:");

    // Hot reads with every volume mounted, against one tmpfs file.
    sys_mount_tmpfs(&tmpfs);
    std::fs::write(tmpfs.join("a"), &kib).unwrap();
    let tmpfs_files = vec![tmpfs.join("a"); 256];
    let hot: Vec<PathBuf> = files.iter().take(256).cloned().collect();
    let t = ops_per_sec(&tmpfs_files, hot_secs);
    let b = ops_per_sec(&hot, hot_secs);

    println!(
        "# baofs scale benchmark: {n} volumes x 3 objects x 1 KiB, one hub, in-process publisher"
    );
    println!(
        "publish: p50 {:?}  p99 {:?}  max {:?}  (all {n}: {:?})",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        publish_all
    );
    println!(
        "first read of all {} files: {:?} ({:?}/file)",
        files.len(),
        first_reads,
        first_reads / files.len() as u32
    );
    println!(
        "process RSS: {} MiB with {n} volumes ({} MiB before publishing); threads: {threads}",
        rss / 1024,
        rss_before / 1024
    );
    println!(
        "hot open+read+close with {n} volumes mounted: tmpfs {t:.0} ops/s, baofs {b:.0} ops/s, ratio {:.2}x",
        t / b
    );

    let t0 = Instant::now();
    for i in 0..n {
        rt.block_on(publisher.unpublish(&targets.join(i.to_string())))
            .unwrap();
    }
    println!("unpublish all: {:?}", t0.elapsed());
    let left = mounts_under(&targets);
    println!("mounts left under the targets after unpublish: {left}");
    rt.block_on(publisher.shutdown());
    sys_umount(&tmpfs);
    let _ = std::fs::remove_dir_all(&work);
    assert_eq!(left, 0, "unpublish left mounts behind");
}

fn sys_mount_tmpfs(target: &Path) {
    let t = CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings outliving the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            t.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=1m".as_ptr().cast(),
        )
    };
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
