//! Tests 3 and 4: rotation (new opens see new versions, open fds keep theirs) and no torn reads.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{MountOpts, Mounted, obj, poll_until, setup, spc_yaml, unique};

/// A value big enough to need several pages, unique per tag.
fn big_value(tag: &str, len: usize) -> String {
    let mut s = String::with_capacity(len);
    while s.len() < len {
        s.push_str(tag);
        s.push('|');
    }
    s.truncate(len);
    s
}

#[test]
fn new_opens_see_new_version_open_fds_keep_old() {
    let Some(cx) = setup() else { return };
    let name = unique("rot");
    let v1 = big_value("version-one", 10_000);
    let v2 = big_value("VERSION-TWO-", 7_000);
    cx.bao.kv2_put(&name, json!({ "v": v1 }));
    let spc = spc_yaml(
        &unique("rot"),
        &cx.bao.addr,
        "rot",
        &[obj("value", &format!("secret/data/{name}"), Some("v"))],
    );
    let m = Mounted::start(MountOpts::new(&cx, spc).interval("200ms"));
    assert_eq!(m.read_string("value"), v1);

    // An fd opened before the rotation, partially read.
    let mut old = File::open(m.path("value")).expect("open before rotation");
    let mut head = [0u8; 100];
    old.read_exact(&mut head).expect("read head");
    assert_eq!(&head[..], &v1.as_bytes()[..100]);

    let written = Instant::now();
    cx.bao.kv2_put(&name, json!({ "v": v2 }));
    poll_until("new opens to see v2", Duration::from_secs(10), || {
        (std::fs::read(m.path("value")).ok()? == v2.as_bytes()).then_some(())
    });
    eprintln!(
        "rotation: v2 visible to new opens {:?} after the write (poll interval 200ms)",
        written.elapsed()
    );
    assert_eq!(
        std::fs::metadata(m.path("value")).expect("stat").len(),
        v2.len() as u64,
        "st_size after rotation"
    );

    // The old fd: the rest of the read, then from the start again, is still v1 in full.
    let mut rest = Vec::new();
    old.read_to_end(&mut rest).expect("read rest of old fd");
    assert_eq!(rest, &v1.as_bytes()[100..], "rest of old fd after rotation");
    old.seek(SeekFrom::Start(0)).expect("seek 0");
    let mut all = Vec::new();
    old.read_to_end(&mut all).expect("reread old fd");
    assert_eq!(all.len(), v1.len(), "old fd length after rotation");
    assert!(
        all == v1.as_bytes(),
        "old fd does not read v1 after rotation"
    );
    drop(old);

    // Once more: v3 replaces v2 and the file still rotates.
    cx.bao.kv2_put(&name, json!({ "v": "three" }));
    poll_until("new opens to see v3", Duration::from_secs(10), || {
        (std::fs::read(m.path("value")).ok()? == b"three").then_some(())
    });
    m.stop();
}

/// The value of version `n`: odd versions are 2 bytes, even ones 5000 bytes; both are fully
/// determined by `n`, and no prefix/suffix of one is a valid other.
fn torn_value(n: u64) -> Vec<u8> {
    if n % 2 == 1 {
        vec![b'a' + (n / 2 % 26) as u8, b'0' + (n % 10) as u8]
    } else {
        // Header, then a pseudo-random letter stream seeded by `n` (an LCG), so every byte
        // range differs between versions.
        let mut v = format!("v{n:08}:").into_bytes();
        let mut state = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        while v.len() < 5000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            v.push(b'A' + ((state >> 33) % 26) as u8);
        }
        v
    }
}

/// What a read returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    /// A 2-byte value: one of the 130 distinct short values (they repeat every 260 versions).
    Short(u64),
    /// A 5000-byte value of exactly this version.
    Long(u64),
}

/// Which single version `bytes` is, or `None` for anything else (a torn or invalid read).
fn classify(bytes: &[u8]) -> Option<Seen> {
    match bytes.len() {
        2 => (1..260u64)
            .step_by(2)
            .find(|n| torn_value(*n) == bytes)
            .map(Seen::Short),
        5000 => {
            if bytes[0] != b'v' || bytes[9] != b':' {
                return None;
            }
            let n: u64 = std::str::from_utf8(&bytes[1..9]).ok()?.parse().ok()?;
            (n.is_multiple_of(2) && torn_value(n) == bytes).then_some(Seen::Long(n))
        }
        _ => None,
    }
}

#[test]
fn no_torn_reads_under_fast_rotation() {
    let Some(cx) = setup() else { return };
    let name = unique("torn");
    cx.bao.kv2_put(
        &name,
        json!({ "v": String::from_utf8(torn_value(1)).expect("ascii") }),
    );
    let spc = spc_yaml(
        &unique("torn"),
        &cx.bao.addr,
        "torn",
        &[obj("value", &format!("secret/data/{name}"), Some("v"))],
    );
    let m = Mounted::start(MountOpts::new(&cx, spc).interval("50ms"));
    let path = m.path("value");
    assert_eq!(std::fs::read(&path).expect("initial read"), torn_value(1));

    const RUN: Duration = Duration::from_secs(3);
    const MAX_READS_PER_THREAD: u64 = 500_000;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();

    // Writer: versions 2, 3, 4, ... alternating long/short, paced (rate limit, not sync).
    let writer = {
        let bao = cx.bao.clone();
        let name = name.clone();
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut n = 1u64;
            while !stop.load(Ordering::Relaxed) && start.elapsed() < RUN {
                n += 1;
                let v = String::from_utf8(torn_value(n)).expect("ascii");
                bao.kv2_put(&name, json!({ "v": v }));
                thread::sleep(Duration::from_millis(15));
            }
            n
        })
    };

    let torn = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let path = path.clone();
            let stop = Arc::clone(&stop);
            let torn = Arc::clone(&torn);
            thread::spawn(move || {
                let (mut reads, mut short, mut long) = (0u64, 0u64, 0u64);
                let mut seen = std::collections::BTreeSet::new();
                let mut first_bad: Option<Vec<u8>> = None;
                let mut buf = Vec::with_capacity(8192);
                while reads < MAX_READS_PER_THREAD && start.elapsed() < RUN {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    buf.clear();
                    let mut f = File::open(&path).expect("open during rotation");
                    f.read_to_end(&mut buf).expect("read during rotation");
                    drop(f);
                    reads += 1;
                    match classify(&buf) {
                        Some(s) => {
                            match s {
                                Seen::Short(_) => short += 1,
                                Seen::Long(_) => long += 1,
                            }
                            seen.insert(s);
                        }
                        None => {
                            torn.fetch_add(1, Ordering::Relaxed);
                            if first_bad.is_none() {
                                first_bad = Some(buf.clone());
                            }
                        }
                    }
                }
                (reads, short, long, seen, first_bad)
            })
        })
        .collect();

    let mut total = 0;
    let (mut shorts, mut longs) = (0, 0);
    let mut versions = std::collections::BTreeSet::new();
    let mut bad_sample = None;
    for r in readers {
        let (reads, short, long, seen, bad) = r.join().expect("reader thread");
        total += reads;
        shorts += short;
        longs += long;
        versions.extend(seen);
        if bad_sample.is_none() {
            bad_sample = bad;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let last = writer.join().expect("writer thread");
    let torn = torn.load(Ordering::Relaxed);
    eprintln!(
        "torn reads: {torn} of {total} reads ({shorts} short, {longs} long, {} distinct values \
         observed, {} versions written) in {:?}",
        versions.len(),
        last - 1,
        start.elapsed()
    );
    if let Some(b) = &bad_sample {
        let show = String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned();
        panic!(
            "{torn} torn/invalid reads of {total}; first: {} bytes starting {show:?}",
            b.len()
        );
    }
    assert_eq!(torn, 0);
    assert!(total > 0, "no reads happened");
    assert!(
        shorts > 0 && longs > 0,
        "rotation not observed: {shorts} short and {longs} long reads"
    );
    assert!(
        versions.len() >= 4,
        "only {} distinct values observed during fast rotation",
        versions.len()
    );
    m.stop();
}

/// The torn-read detector itself: mixes of two versions are rejected, each version accepted.
#[test]
fn classify_rejects_mixed_versions() {
    for n in 1..600 {
        let v = torn_value(n);
        let want = if n % 2 == 1 {
            v.len() == 2
        } else {
            v.len() == 5000
        };
        assert!(want, "version {n} has the wrong length");
        assert!(classify(&v).is_some(), "version {n} not recognised");
    }
    let (a, b) = (torn_value(2), torn_value(4));
    let mut mixed = a[..4096].to_vec();
    mixed.extend_from_slice(&b[4096..]);
    assert_eq!(classify(&mixed), None, "head of v2 + tail of v4");
    let mut mixed = b[..4096].to_vec();
    mixed.extend_from_slice(&a[4096..]);
    assert_eq!(classify(&mixed), None, "head of v4 + tail of v2");
    assert_eq!(classify(&a[..2]), None, "2-byte prefix of a long version");
    let short = torn_value(3);
    let mut mixed = short.clone();
    mixed.extend_from_slice(&a[2..]);
    assert_eq!(classify(&mixed), None, "short value + tail of a long one");
    // (Two 2-byte values cannot be told apart from a third; a 2-byte read is one page anyway.)
}
