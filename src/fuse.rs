//! The FUSE stage: the hub connection, served by our own request loop (`raw`), plus mounting
//! (`mount`) and kernel invalidation (`invalidator`).
//!
//! One connection (the "hub", mounted at a private directory) serves every volume; each target
//! is a bind mount of its volume's subtree. `raw::Server` answers each request by asking
//! `fs::Fs`; no logic lives in this stage. OPEN, OPENDIR and FLUSH answer ENOSYS, which makes the
//! kernel stop sending them: opens then cost no round trip and keep the page cache
//! ("zero-message opens", measured at ~0.7x tmpfs throughput in docs/design.md §3). Writes answer
//! EROFS. Entry and attribute TTLs are long because every change is announced explicitly by the
//! invalidator thread.
//!
//! Why our own loop and not fuser's `Session`: restart survival needs a successor process to
//! serve a `/dev/fuse` fd whose FUSE_INIT a predecessor already answered, and fuser 0.18's
//! `Session::from_fd` always waits for an INIT that never comes again (cberner/fuser#753). So
//! `Hub::mount` starts the raw loops on a fresh connection (they answer INIT), and `Hub::adopt`
//! starts them on an initialized one handed over by the holder, then asks the kernel to resend
//! what the predecessor had read but not answered (FUSE_NOTIFY_RESEND, Linux 6.9+). Behaviour
//! and measurements of the loop: docs/design.md §14. fuser remains a dependency only for its
//! value types (`FileAttr`, `FileType`, `INodeNo`), used by `fs` and `raw::abi`.

pub mod invalidator;
pub mod mount;
pub mod raw;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

pub use invalidator::InvalidatorHandle;
pub use mount::Unmounted;

use crate::fs::Fs;

/// How long the kernel may cache names and attributes without asking. Changes are pushed by
/// explicit invalidation, so this only bounds the damage of a lost notification.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// How long `Hub::mount` waits for the loops to answer FUSE_INIT.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the FUSE layer.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// Opening /dev/fuse or mount(2) failed.
    #[error("mounting the FUSE hub at {path}: {source}")]
    MountHub {
        /// The hub directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Starting the FUSE loops failed: FUSE_INIT not answered in time or refused, a thread
    /// could not be spawned, or (adopting) FUSE_NOTIFY_RESEND failed on a dead connection.
    #[error("starting the FUSE session at {path}: {source}")]
    Session {
        /// The hub directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Bind-mounting a volume at its target failed.
    #[error("bind-mounting volume '{volume}' at {target}: {source}")]
    Bind {
        /// The volume id.
        volume: String,
        /// The target.
        target: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Unmounting failed.
    #[error("unmounting {target}: {source}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Requests that reached userspace, by kind: the hot path should add none.
#[derive(Debug, Default)]
pub struct RequestCounts {
    /// LOOKUP
    pub lookup: AtomicU64,
    /// GETATTR
    pub getattr: AtomicU64,
    /// READ
    pub read: AtomicU64,
    /// READDIR
    pub readdir: AtomicU64,
    /// FORGET and BATCH_FORGET entries
    pub forget: AtomicU64,
    /// Everything else (OPEN, FLUSH, xattrs, writes, ...)
    pub other: AtomicU64,
}

impl RequestCounts {
    /// (lookup, getattr, read, readdir, forget, other) at this instant.
    pub fn snapshot(&self) -> [u64; 6] {
        [
            &self.lookup,
            &self.getattr,
            &self.read,
            &self.readdir,
            &self.forget,
            &self.other,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

/// The one FUSE connection of the process, mounted at a private directory; every volume is a
/// bind mount of its subtree. Served by `threads` raw loops (`baofs-fuse-N`) sharing one
/// `raw::Server`, plus the `baofs-inval` thread for kernel notifications.
pub struct Hub {
    dir: PathBuf,
    fd: Arc<OwnedFd>,
    server: Arc<raw::Server>,
    loops: Vec<JoinHandle<()>>,
    invalidator: InvalidatorHandle,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("dir", &self.dir)
            .field("conn", &self.server.state())
            .field("loops", &self.loops.len())
            .finish_non_exhaustive()
    }
}

/// Starts `n` loops of `server` on `fd`, named `baofs-fuse-N`. A loop that fails logs why; one
/// that ends because the connection did (unmount) is silent.
fn spawn_loops(
    server: &Arc<raw::Server>,
    fd: &Arc<OwnedFd>,
    n: usize,
) -> io::Result<Vec<JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let (server, fd) = (Arc::clone(server), Arc::clone(fd));
            std::thread::Builder::new()
                .name(format!("baofs-fuse-{i}"))
                .spawn(move || {
                    if let Err(e) = server.serve(fd.as_fd()) {
                        warn!(error = %e, "FUSE loop ended with an error");
                    }
                })
        })
        .collect()
}

/// Asks the kernel to queue again every request of the connection that was read but not
/// answered (by a predecessor that died mid-request). Too old a kernel is only a warning.
fn resend(fd: BorrowedFd<'_>) -> io::Result<()> {
    match raw::notify(fd, &raw::encode_notify_resend()) {
        Ok(()) => {
            debug!("FUSE_NOTIFY_RESEND: requests read but not answered before are queued again");
            Ok(())
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
            warn!(
                error = %e,
                "FUSE_NOTIFY_RESEND needs Linux >= 6.9 (FUSE 7.40): requests the previous \
                 server had read but not answered stay unanswered (their callers hang until \
                 killed or the hub is unmounted)"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

impl Hub {
    /// Opens /dev/fuse, mounts a new connection at `dir` (which must exist), starts `threads`
    /// loops (at least 2) and returns once they answered FUSE_INIT (within `INIT_TIMEOUT`). On
    /// any failure after the mount, the hub is unmounted again.
    pub fn mount(dir: &Path, fs: Arc<Fs>, threads: usize) -> Result<Self, FuseError> {
        let fd = mount::mount_fuse(dir, "baofs").map_err(|source| FuseError::MountHub {
            path: dir.to_owned(),
            source,
        })?;
        let fd = Arc::new(fd);
        let server = Arc::new(raw::Server::new(fs, DEFAULT_TTL, raw::ConnState::fresh()));
        let started = (|| {
            let invalidator = invalidator::spawn(Arc::clone(&fd))?;
            let loops = spawn_loops(&server, &fd, threads.max(2))?;
            let state = server.wait_init(INIT_TIMEOUT)?;
            Ok::<_, io::Error>((invalidator, loops, state))
        })();
        match started {
            Ok((invalidator, loops, state)) => {
                info!(
                    hub = %dir.display(),
                    protocol = format!("{}.{}", state.major, state.minor),
                    "FUSE hub mounted"
                );
                Ok(Self {
                    dir: dir.to_owned(),
                    fd,
                    server,
                    loops,
                    invalidator,
                })
            }
            Err(source) => {
                // The loops end with ENODEV once the connection is gone.
                server.stop();
                let _ = mount::unmount(dir);
                Err(FuseError::Session {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }

    /// Serves `fd`, an already initialized connection (e.g. fetched back from the holder) whose
    /// hub is already mounted at `dir`: starts `threads` loops (at least 2) with `state` (no INIT
    /// expected; `state` must be initialized), then writes FUSE_NOTIFY_RESEND so requests the
    /// previous server had read but not answered are queued again. On kernels before 6.9 that
    /// is a warning, not an error. Never mounts or unmounts.
    pub fn adopt(
        dir: &Path,
        fs: Arc<Fs>,
        fd: OwnedFd,
        state: raw::ConnState,
        threads: usize,
    ) -> Result<Self, FuseError> {
        let fail = |source| FuseError::Session {
            path: dir.to_owned(),
            source,
        };
        if !state.is_initialized() {
            return Err(fail(io::Error::new(
                io::ErrorKind::InvalidInput,
                "adopting needs the negotiated state of an initialized connection, not \
                 ConnState::fresh()",
            )));
        }
        let fd = Arc::new(fd);
        let server = Arc::new(raw::Server::new(fs, DEFAULT_TTL, state));
        let started = (|| {
            let invalidator = invalidator::spawn(Arc::clone(&fd))?;
            let loops = spawn_loops(&server, &fd, threads.max(2))?;
            resend(fd.as_fd())?;
            Ok::<_, io::Error>((invalidator, loops))
        })();
        match started {
            Ok((invalidator, loops)) => {
                info!(
                    hub = %dir.display(),
                    protocol = format!("{}.{}", state.major, state.minor),
                    "FUSE hub adopted"
                );
                Ok(Self {
                    dir: dir.to_owned(),
                    fd,
                    server,
                    loops,
                    invalidator,
                })
            }
            Err(source) => {
                // Started loops return after their next request; the connection stays up for
                // whoever else holds it.
                server.stop();
                Err(fail(source))
            }
        }
    }

    /// The hub directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The connection's `/dev/fuse` fd, e.g. to hand a dup of it to the holder.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The connection's negotiated INIT: what a successor needs to adopt `fd`.
    pub fn conn_state(&self) -> raw::ConnState {
        self.server.state()
    }

    /// Requests that reached userspace so far.
    pub fn request_counts(&self) -> &RequestCounts {
        self.server.request_counts()
    }

    /// A handle to queue kernel invalidations.
    pub fn invalidator(&self) -> InvalidatorHandle {
        self.invalidator.clone()
    }

    /// Bind-mounts volume `volume_id` at `target`.
    pub fn bind(&self, volume_id: &str, target: &Path) -> Result<(), FuseError> {
        mount::bind(&self.dir.join(volume_id), target).map_err(|source| FuseError::Bind {
            volume: volume_id.to_owned(),
            target: target.to_owned(),
            source,
        })
    }

    /// Unmounts a volume's target (lazily if files are open).
    pub fn unbind(&self, target: &Path) -> Result<Unmounted, FuseError> {
        mount::unmount(target).map_err(|source| FuseError::Unmount {
            target: target.to_owned(),
            source,
        })
    }

    /// Unmounts the hub and waits up to `grace` for the FUSE loops to end (they do on ENODEV
    /// once the connection is gone). If files are still open the hub is detached and the loops
    /// keep serving them until the process exits.
    pub fn shutdown(self, grace: Duration) -> Result<Unmounted, FuseError> {
        let how = mount::unmount(&self.dir).map_err(|source| FuseError::Unmount {
            target: self.dir.clone(),
            source,
        })?;
        let deadline = Instant::now() + grace;
        let ended = || self.loops.iter().all(JoinHandle::is_finished);
        while !ended() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if ended() {
            for t in self.loops {
                if t.join().is_err() {
                    warn!("a FUSE loop panicked");
                }
            }
        } else {
            info!(hub = %self.dir.display(), "files still open: hub detached, loops end at exit");
        }
        Ok(how)
    }
}
