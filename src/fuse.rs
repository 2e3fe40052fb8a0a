//! The fuse adapter stage: fuser's `Filesystem` over `fs::Fs`, and the hub connection.
//!
//! Each callback asks `fs` and replies; no logic lives here. Write-type calls answer EROFS.
//! `open` and `flush` answer ENOSYS, which makes the kernel stop sending them: opens then cost
//! no round trip and keep the page cache ("zero-message opens", measured at ~0.7x tmpfs
//! throughput in docs/design.md). Entry and attribute TTLs are long because every change is
//! announced explicitly by the invalidator.
//!
//! fuser's `Filesystem`, `Session` and `Notifier` are used only in this module and its children.

pub mod invalidator;
pub mod mount;
pub mod raw;

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileHandle, Filesystem, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session, SessionACL,
    TimeOrNow, WriteFlags,
};
use tracing::{info, warn};

pub use invalidator::InvalidatorHandle;
pub use mount::Unmounted;

use crate::fs::{Fs, FsError};

/// How long the kernel may cache names and attributes without asking. Changes are pushed by
/// explicit invalidation, so this only bounds the damage of a lost notification.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

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
    /// The FUSE handshake or session start failed.
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

fn errno(e: FsError) -> Errno {
    Errno::from_i32(e.errno())
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
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

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

/// `fuser::Filesystem` over `Fs`.
struct Adapter {
    fs: Arc<Fs>,
    ttl: Duration,
    counts: Arc<RequestCounts>,
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, _config: &mut KernelConfig) -> io::Result<()> {
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        RequestCounts::bump(&self.counts.lookup);
        match self.fs.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        RequestCounts::bump(&self.counts.forget);
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        RequestCounts::bump(&self.counts.getattr);
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        RequestCounts::bump(&self.counts.other);
        // ENOSYS: the kernel stops sending OPEN/RELEASE and keeps the page cache.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        RequestCounts::bump(&self.counts.other);
        reply.error(Errno::ENOSYS);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        RequestCounts::bump(&self.counts.other);
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        RequestCounts::bump(&self.counts.read);
        match self.fs.read(ino.0, offset, size) {
            Ok(data) => reply.data(data.bytes()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        RequestCounts::bump(&self.counts.readdir);
        match self.fs.readdir(ino.0, offset) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(INodeNo(e.ino), e.next_offset, e.kind, &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // ENOSYS: no xattrs, and the kernel stops asking (e.g. security.selinux on every stat).
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    // Everything below modifies: read-only filesystem.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::from_i32(libc::EROFS));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::from_i32(libc::EROFS));
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::from_i32(libc::EROFS));
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::EROFS));
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::EROFS));
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::from_i32(libc::EROFS));
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::from_i32(libc::EROFS));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::EROFS));
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::from_i32(libc::EROFS));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::EROFS));
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::from_i32(libc::EROFS));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::from_i32(libc::EROFS));
    }
}

/// The one FUSE connection of the process, mounted at a private directory; every volume is a
/// bind mount of its subtree.
pub struct Hub {
    dir: PathBuf,
    session: Option<BackgroundSession>,
    invalidator: InvalidatorHandle,
    counts: Arc<RequestCounts>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Mounts the hub at `dir` (which must exist) and starts `threads` FUSE loops (at least 2).
    pub fn mount(dir: &Path, fs: Arc<Fs>, threads: usize) -> Result<Self, FuseError> {
        let fd = mount::mount_fuse(dir, "baofs").map_err(|source| FuseError::MountHub {
            path: dir.to_owned(),
            source,
        })?;
        let counts = Arc::new(RequestCounts::default());
        let started = (|| {
            let mut config = Config::default();
            config.n_threads = Some(threads.max(2));
            let adapter = Adapter {
                fs,
                ttl: DEFAULT_TTL,
                counts: Arc::clone(&counts),
            };
            let session = Session::from_fd(adapter, fd, SessionACL::All, config)?;
            let notifier = session.notifier();
            let session = session.spawn()?;
            let invalidator = invalidator::spawn(notifier)?;
            Ok::<_, io::Error>((session, invalidator))
        })();
        match started {
            Ok((session, invalidator)) => {
                info!(hub = %dir.display(), "FUSE hub mounted");
                Ok(Self {
                    dir: dir.to_owned(),
                    session: Some(session),
                    invalidator,
                    counts,
                })
            }
            Err(source) => {
                let _ = mount::unmount(dir);
                Err(FuseError::Session {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }

    /// The hub directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Requests that reached userspace so far.
    pub fn request_counts(&self) -> &RequestCounts {
        &self.counts
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

    /// Unmounts the hub and waits up to `grace` for the FUSE loops to end. If files are still
    /// open the hub is detached and the loops keep serving them until the process exits.
    pub fn shutdown(mut self, grace: Duration) -> Result<Unmounted, FuseError> {
        let how = mount::unmount(&self.dir).map_err(|source| FuseError::Unmount {
            target: self.dir.clone(),
            source,
        })?;
        if let Some(session) = self.session.take() {
            let deadline = Instant::now() + grace;
            while !session.guard.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if session.guard.is_finished() {
                if let Err(e) = session.join() {
                    warn!(error = %e, "FUSE session ended with an error");
                }
            } else {
                info!(hub = %self.dir.display(), "files still open: hub detached, loops end at exit");
            }
        }
        Ok(how)
    }
}
