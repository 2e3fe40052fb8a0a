//! The raw FUSE loop (`baofs::fuse::raw`) against the real kernel, in-process and without
//! OpenBao: a fresh hub connection initialized by the raw loop, reads, modes, readdir, EROFS, a
//! rotation announced with our own FUSE_NOTIFY_DELETE encoding, and then the point of the loop:
//! the serving threads stop without closing the connection and a new loop adopts the
//! already-initialized fd (no INIT) and keeps serving, including a request that was queued
//! while nobody was reading. Also `fuse::Hub::mount`, which runs the hub on these loops: INIT
//! answered before it returns, named threads, a rotation through the invalidator thread, and
//! shutdown.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use baofs::cache::{Layout, SecretCache};
use baofs::fs::{Fs, Invalidation};
use baofs::fuse::raw::{self, ConnState, Server};
use baofs::fuse::{Hub, mount};
use baofs::provider::FetchedObject;
use baofs::secret::SecretBytes;
use baofs::spc::{ObjectSpec, SecretProviderClass};
use baofs::volume::Ownership;

use crate::harness::{poll_until, unique};

const TIMEOUT: Duration = Duration::from_secs(20);
const VOLUME: &str = "rawvol";

/// Root and /dev/fuse, like `harness::setup()` but without OpenBao. `false`: skip explicitly.
pub(crate) fn setup() -> bool {
    if std::env::var("BAOFS_SKIP_FUSE").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: BAOFS_SKIP_FUSE=1 (real-kernel FUSE tests not run)");
        return false;
    }
    let uid = fs::metadata("/proc/self").expect("stat /proc/self").uid();
    assert_eq!(
        uid, 0,
        "the FUSE integration tests must run as root (or set BAOFS_SKIP_FUSE=1 to skip them)"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: modprobe fuse, or set BAOFS_SKIP_FUSE=1 to skip the FUSE tests"
    );
    true
}

fn objects() -> Vec<ObjectSpec> {
    let yaml = "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\n\
        metadata:\n  name: t\nspec:\n  provider: openbao\n  parameters:\n    roleName: r\n\
        \x20   vaultAddress: http://127.0.0.1:1\n    objects: |\n\
        \x20     - {objectName: \"a\", secretPath: \"secret/data/x\", filePermission: \"0600\"}\n\
        \x20     - {objectName: \"sub/b\", secretPath: \"secret/data/x\"}\n\
        \x20     - {objectName: \"c\", secretPath: \"secret/data/x\"}\n\
        \x20     - {objectName: \"e\", secretPath: \"secret/data/x\"}\n";
    SecretProviderClass::from_yaml(yaml)
        .expect("test SPC parses")
        .objects
}

/// One fetched value per object, in order.
pub(crate) fn values(objs: &[ObjectSpec], vals: &[&str]) -> Vec<FetchedObject> {
    objs.iter()
        .zip(vals)
        .map(|(o, v)| FetchedObject {
            path: o.path.clone(),
            value: SecretBytes::copy_from(v.as_bytes()),
            version: String::new(),
            refresh_at: None,
        })
        .collect()
}

/// Unmounts everything and removes the temp dir, also when an assertion fails.
struct Cleanup {
    dir: PathBuf,
    target: PathBuf,
    hub: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for m in [&self.target, &self.hub] {
            if let Err(e) = mount::unmount(m) {
                eprintln!("unmounting {}: {e}", m.display());
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `n` raw loops serving `fd`.
pub(crate) fn spawn_loops(
    server: &Arc<Server>,
    fd: &Arc<OwnedFd>,
    n: usize,
) -> Vec<JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (server, fd) = (Arc::clone(server), Arc::clone(fd));
            thread::spawn(move || server.serve(fd.as_fd()).expect("raw FUSE loop"))
        })
        .collect()
}

/// Waits (bounded) for every loop to end, then joins them.
pub(crate) fn join_all(what: &str, threads: Vec<JoinHandle<()>>) {
    poll_until(what, TIMEOUT, || {
        threads.iter().all(|t| t.is_finished()).then_some(())
    });
    for t in threads {
        t.join().expect("loop thread panicked");
    }
}

/// The file's content, or a panic naming it.
pub(crate) fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn rotate(fs_: &Fs, vol: &baofs::cache::CachedVolume, fd: &OwnedFd, vals: Vec<FetchedObject>) {
    let changes = vol.replace(vals).expect("replace");
    let inval = fs_.invalidations(&changes);
    assert!(!inval.is_empty(), "the kernel knows the rotated file");
    for i in inval {
        raw::notify(
            fd.as_fd(),
            &raw::encode_notify_delete(i.parent, i.child, i.name.as_bytes()),
        )
        .expect("FUSE_NOTIFY_DELETE");
    }
}

#[test]
fn raw_loop_serves_a_fresh_hub_and_adopts_it_without_init() {
    if !setup() {
        return;
    }
    let dir = PathBuf::from("/tmp").join(unique("baofs-raw"));
    let (hub, target) = (dir.join("hub"), dir.join("target"));
    fs::create_dir_all(&hub).unwrap();
    fs::create_dir_all(&target).unwrap();
    let _cleanup = Cleanup {
        dir: dir.clone(),
        target: target.clone(),
        hub: hub.clone(),
    };

    let objs = objects();
    let cache = Arc::new(SecretCache::new());
    let owner = Ownership {
        uid: 1234,
        gid: 5678,
    };
    let vol = cache
        .insert(
            VOLUME,
            Layout::new(VOLUME, &objs).unwrap(),
            owner,
            values(&objs, &["alpha", "beta", "gamma", "epsilon"]),
        )
        .unwrap();
    let fs_ = Arc::new(Fs::new(Arc::clone(&cache)));
    let ttl = Duration::from_secs(3600);

    // A fresh connection: INIT is answered by the raw loop.
    let fd = Arc::new(mount::mount_fuse(&hub, "baofs").expect("mount the hub"));
    let first = Arc::new(Server::new(Arc::clone(&fs_), ttl, ConnState::fresh()));
    let loops = spawn_loops(&first, &fd, 2);
    mount::bind(&hub.join(VOLUME), &target).expect("bind the volume");
    let state = first.state();
    assert!(state.is_initialized(), "INIT answered: {state:?}");
    assert_eq!(state.major, 7);
    assert!(state.minor >= raw::MIN_MINOR && state.minor <= raw::SUPPORTED_MINOR);

    // Contents, modes, owners, readdir.
    assert_eq!(read(&target.join("a")), "alpha");
    assert_eq!(read(&target.join("sub/b")), "beta");
    let m = fs::metadata(target.join("a")).unwrap();
    assert_eq!(m.mode(), 0o100600);
    assert_eq!((m.uid(), m.gid(), m.len()), (1234, 5678, 5));
    assert_eq!(fs::metadata(target.join("sub/b")).unwrap().mode(), 0o100644);
    assert_eq!(fs::metadata(target.join("sub")).unwrap().mode(), 0o040755);
    let mut names: Vec<String> = fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "c", "e", "sub"]);
    assert_eq!(
        fs::metadata(target.join("nope")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );

    // Read-only.
    for (what, r) in [
        ("write", fs::write(target.join("a"), b"x")),
        ("create", fs::write(target.join("new"), b"x")),
        ("mkdir", fs::create_dir(target.join("d"))),
        (
            "chmod",
            fs::set_permissions(target.join("a"), fs::Permissions::from_mode(0o777)),
        ),
    ] {
        assert_eq!(
            r.unwrap_err().raw_os_error(),
            Some(libc::EROFS),
            "{what} must fail with EROFS"
        );
    }

    // Rotation: a new open sees the new bytes, an fd opened before keeps the old ones.
    let mut old = fs::File::open(target.join("a")).unwrap();
    rotate(
        &fs_,
        &vol,
        &fd,
        values(&objs, &["alpha-2", "beta", "gamma", "epsilon"]),
    );
    assert_eq!(read(&target.join("a")), "alpha-2");
    let mut s = String::new();
    old.read_to_string(&mut s).unwrap();
    assert_eq!(s, "alpha");
    let served_first = first.request_counts().snapshot();

    // Stop the loops without closing the connection. A loop returns after the request it
    // handles next, so keep the kernel sending requests (LOOKUPs of absent names, from a helper
    // thread: the last one may be read by nobody) until both loops are gone.
    let dup = Arc::new(fd.try_clone().expect("dup the /dev/fuse fd"));
    first.stop();
    let stopped = Arc::new(AtomicBool::new(false));
    let poker = {
        let (target, stopped) = (target.clone(), Arc::clone(&stopped));
        thread::spawn(move || {
            let mut i = 0u64;
            while !stopped.load(Ordering::SeqCst) {
                let _ = fs::metadata(target.join(format!("poke-{i}")));
                i += 1;
            }
        })
    };
    join_all("the first loops to stop", loops);
    stopped.store(true, Ordering::SeqCst);
    // The connection still lives: only the dup is kept.
    drop(fd);

    // Adoption: a new server on the dup, told the negotiated version; it must not wait for INIT.
    let adopted = Arc::new(Server::new(
        Arc::clone(&fs_),
        ttl,
        ConnState::adopted(state.minor),
    ));
    let loops = spawn_loops(&adopted, &dup, 2);
    // A LOOKUP the poker may have queued while no loop read is answered now.
    poll_until("the queued request to be answered", TIMEOUT, || {
        poker.is_finished().then_some(())
    });
    poker.join().unwrap();
    // Names the kernel never looked up go to the new loop.
    assert_eq!(read(&target.join("c")), "gamma");
    assert_eq!(read(&target.join("e")), "epsilon");
    assert_eq!(fs::metadata(target.join("e")).unwrap().mode(), 0o100644);
    let mut names: Vec<String> = fs::read_dir(target.join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b"]);
    // Nodes looked up before the handoff still work, and the old fd still reads old bytes.
    assert_eq!(read(&target.join("a")), "alpha-2");
    old.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    old.read_to_string(&mut s).unwrap();
    assert_eq!(
        s, "alpha",
        "the fd opened before the rotation keeps the old bytes"
    );
    // A rotation through the adopted connection.
    rotate(
        &fs_,
        &vol,
        &dup,
        values(&objs, &["alpha-3", "beta", "gamma", "epsilon"]),
    );
    assert_eq!(read(&target.join("a")), "alpha-3");
    let [lookup, _, read_n, readdir, _, _] = adopted.request_counts().snapshot();
    assert!(
        lookup >= 3 && read_n >= 2 && readdir >= 1,
        "the adopted loop served requests: {:?}",
        adopted.request_counts().snapshot()
    );
    eprintln!(
        "raw FUSE: negotiated 7.{}, first loop served {served_first:?}, adopted loop {:?}",
        state.minor,
        adopted.request_counts().snapshot()
    );

    // Unmount: the loops end with ENODEV.
    drop(old);
    assert_eq!(mount::unmount(&target).unwrap(), mount::Unmounted::Clean);
    assert_eq!(mount::unmount(&hub).unwrap(), mount::Unmounted::Clean);
    join_all("the adopted loops to end after unmount", loops);
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim_end().to_owned())
        .collect()
}

#[test]
fn hub_mount_serves_on_the_raw_loop_and_shuts_down() {
    if !setup() {
        return;
    }
    let dir = PathBuf::from("/tmp").join(unique("baofs-rawhub"));
    let (hub_dir, target) = (dir.join("hub"), dir.join("target"));
    fs::create_dir_all(&hub_dir).unwrap();
    fs::create_dir_all(&target).unwrap();
    let _cleanup = Cleanup {
        dir: dir.clone(),
        target: target.clone(),
        hub: hub_dir.clone(),
    };
    let objs = objects();
    let cache = Arc::new(SecretCache::new());
    let vol = cache
        .insert(
            VOLUME,
            Layout::new(VOLUME, &objs).unwrap(),
            Ownership { uid: 0, gid: 0 },
            values(&objs, &["alpha", "beta", "gamma", "epsilon"]),
        )
        .unwrap();
    let fs_ = Arc::new(Fs::new(Arc::clone(&cache)));

    // INIT is answered before `mount` returns.
    let hub = Hub::mount(&hub_dir, Arc::clone(&fs_), 3).expect("Hub::mount");
    let state = hub.conn_state();
    assert!(state.is_initialized(), "INIT answered: {state:?}");
    assert!(state.minor >= raw::MIN_MINOR && state.minor <= raw::SUPPORTED_MINOR);
    // A spawned thread names itself once it first runs, so it may briefly still carry the
    // spawning thread's name: poll until every one has named itself.
    let wanted = [
        "baofs-fuse-0",
        "baofs-fuse-1",
        "baofs-fuse-2",
        "baofs-inval",
    ];
    poll_until("the hub's threads to be named", TIMEOUT, || {
        let names = thread_names();
        wanted
            .iter()
            .all(|n| names.iter().any(|t| t == n))
            .then_some(())
    });
    assert_eq!(hub.dir(), hub_dir);
    drop(hub.fd().try_clone_to_owned().expect("dup the hub fd"));

    hub.bind(VOLUME, &target).expect("bind");
    assert_eq!(read(&target.join("a")), "alpha");
    assert_eq!(read(&target.join("sub/b")), "beta");
    assert_eq!(fs::metadata(target.join("a")).unwrap().mode(), 0o100600);
    assert_eq!(
        fs::write(target.join("a"), b"x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );

    // A rotation announced by the invalidator thread; an fd opened before keeps its bytes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut old = fs::File::open(target.join("a")).unwrap();
    let changes = vol
        .replace(values(&objs, &["alpha-2", "beta", "gamma", "epsilon"]))
        .unwrap();
    let inval = fs_.invalidations(&changes);
    assert!(!inval.is_empty());
    rt.block_on(hub.invalidator().invalidate(inval));
    assert_eq!(read(&target.join("a")), "alpha-2");
    let mut s = String::new();
    old.read_to_string(&mut s).unwrap();
    assert_eq!(s, "alpha");
    drop(old);
    // An entry the kernel does not have (unknown parent: ENOENT) is not an error and completes.
    rt.block_on(hub.invalidator().invalidate(vec![Invalidation {
        parent: u64::MAX - 1,
        child: u64::MAX - 2,
        name: "absent".into(),
    }]));

    let [lookup, _, read_n, _, _, _] = hub.request_counts().snapshot();
    assert!(
        lookup >= 3 && read_n >= 3,
        "counted: {:?}",
        hub.request_counts().snapshot()
    );
    assert_eq!(hub.unbind(&target).unwrap(), mount::Unmounted::Clean);
    assert_eq!(hub.shutdown(TIMEOUT).unwrap(), mount::Unmounted::Clean);
    assert!(
        !mount::is_mount_point(&hub_dir).unwrap(),
        "the hub is unmounted"
    );
}
