//! The FUSE request loop that serves the hub: our own, for the read-only request subset baofs
//! serves.
//!
//! Why our own: fuser 0.18 cannot adopt a connection that is already initialized
//! (`Session::from_fd` always waits for a FUSE_INIT that never comes again; cberner/fuser#753).
//! This loop can: `ConnState::adopted` starts serving at once with the protocol version
//! remembered from the original INIT, which is what a successor process needs to take over a
//! live `/dev/fuse` fd after a restart. A fresh connection (`ConnState::fresh`) is served too:
//! the loop answers INIT itself, and `Server::wait_init` tells when it has.
//!
//! The loop is blocking and thread-agnostic: run `Server::serve` on N threads with the same fd
//! (`fuse::Hub` does). Replies are one `write(2)` each; each loop reads requests into its own
//! buffer, large enough for any `max_write` the connection may have negotiated (an adopted fd
//! may come from a fuser-served process, which negotiates 16 MiB).
//!
//! OPEN/OPENDIR/FLUSH answer ENOSYS, so the kernel stops sending them and opens cost no round
//! trip ("zero-message opens", docs/design.md §3); xattrs and ACCESS answer ENOSYS; every
//! write-type opcode answers EROFS.
#![allow(unsafe_code)]

pub mod abi;

use std::ffi::OsStr;
use std::io;
use std::io::Write as _;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing::{debug, warn};

use self::abi::{InHeader, InitIn, InitOut, ReadIn, Statfs, op};
pub use self::abi::{encode_notify_delete, encode_notify_resend};
use super::RequestCounts;
use crate::fs::Fs;

/// Highest protocol minor version this loop speaks.
pub const SUPPORTED_MINOR: u32 = 40;
/// Lowest kernel minor version accepted (the 88-byte `fuse_attr` layout, 7.9+, and current
/// `fuse_init_out` sizes are assumed).
pub const MIN_MINOR: u32 = 12;
/// `max_write` this loop negotiates on a fresh connection. The mount is read-only: the kernel
/// never sends WRITE, so this only sizes the kernel's buffer checks.
pub const MAX_WRITE: u32 = 128 * 1024;
/// Read buffer: the kernel rejects a `read(2)` smaller than `max_write` + headers with EINVAL,
/// and an adopted connection may have been negotiated by fuser (16 MiB), so size for that. The
/// zeroed allocation is lazily backed: untouched pages cost nothing.
pub const BUFFER_SIZE: usize = 16 * 1024 * 1024 + 64 * 1024;

/// What a loop needs to know about a connection: its negotiated INIT. Plain data, no secrets,
/// so it can be persisted and handed to a successor process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnState {
    /// Negotiated protocol major version; 0 while waiting for INIT.
    pub major: u32,
    /// Negotiated protocol minor version.
    pub minor: u32,
    /// Capability flags the INIT reply claimed.
    pub flags: u32,
    /// `max_write` the INIT reply gave.
    pub max_write: u32,
}

impl ConnState {
    /// A freshly mounted connection: the first request is FUSE_INIT.
    pub const fn fresh() -> Self {
        Self {
            major: 0,
            minor: 0,
            flags: 0,
            max_write: 0,
        }
    }

    /// An already initialized connection, negotiated at protocol 7.`minor`: serve at once.
    pub const fn adopted(minor: u32) -> Self {
        Self {
            major: 7,
            minor,
            flags: 0,
            max_write: 0,
        }
    }

    /// Whether INIT has been answered.
    pub const fn is_initialized(&self) -> bool {
        self.major != 0
    }
}

/// Test-only fault injection: a READ of a file whose node name (last path component) equals
/// this variable's value is read from the device and never answered; the loop that read it
/// parks forever. Read once per `Server`. Never set it in production.
pub const FAULT_STALL_READ_ENV: &str = "BAOFS_FAULT_STALL_READ";

/// How the first FUSE_INIT went, for `Server::wait_init`.
type InitResult = Option<Result<(), String>>;

/// The shared state of the loops serving one connection.
pub struct Server {
    fs: Arc<Fs>,
    ttl: Duration,
    init: OnceLock<ConnState>,
    stop: AtomicBool,
    counts: Arc<RequestCounts>,
    /// Whether `init_result` is settled: the only check on the hot path.
    init_settled: AtomicBool,
    init_result: Mutex<InitResult>,
    init_cv: Condvar,
    /// `FAULT_STALL_READ_ENV`, read at construction.
    stall_read: Option<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("ttl", &self.ttl)
            .field("init", &self.init.get())
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

/// What to do after a request.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// No reply (FORGET, BATCH_FORGET, INTERRUPT).
    Silent,
    /// Write this reply.
    Reply(Vec<u8>),
    /// Write this reply, then end the loop (DESTROY).
    ReplyAndStop(Vec<u8>),
    /// Never answer; park this loop forever (test-only fault injection, `FAULT_STALL_READ_ENV`):
    /// a READ of the file with this name.
    Stall(String),
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Server {
    /// A server for `fs`, with entry/attribute TTL `ttl`, over a connection in `state`.
    pub fn new(fs: Arc<Fs>, ttl: Duration, state: ConnState) -> Self {
        Self::with_counts(fs, ttl, state, Arc::new(RequestCounts::default()))
    }

    /// As `new`, counting requests into `counts` (shared with whoever reports them).
    pub fn with_counts(
        fs: Arc<Fs>,
        ttl: Duration,
        state: ConnState,
        counts: Arc<RequestCounts>,
    ) -> Self {
        let init = OnceLock::new();
        let adopted = state.is_initialized();
        if adopted {
            let _ = init.set(state);
        }
        let stall_read = std::env::var(FAULT_STALL_READ_ENV)
            .ok()
            .filter(|v| !v.is_empty());
        if let Some(name) = &stall_read {
            warn!(
                name,
                "fault injection enabled ({FAULT_STALL_READ_ENV}): READs of this file are never \
                 answered"
            );
        }
        Self {
            fs,
            ttl,
            init,
            stop: AtomicBool::new(false),
            counts,
            init_settled: AtomicBool::new(adopted),
            init_result: Mutex::new(adopted.then_some(Ok(()))),
            init_cv: Condvar::new(),
            stall_read,
        }
    }

    /// The connection's negotiated state (`fresh()` until INIT was answered): persist this to
    /// let a successor adopt the fd.
    pub fn state(&self) -> ConnState {
        self.init.get().copied().unwrap_or(ConnState::fresh())
    }

    /// Requests served so far, by kind.
    pub fn request_counts(&self) -> &RequestCounts {
        &self.counts
    }

    /// The shared request counters (the same ones `request_counts` reads).
    pub fn counts(&self) -> Arc<RequestCounts> {
        Arc::clone(&self.counts)
    }

    /// Waits up to `timeout` until a loop has written the reply to FUSE_INIT and returns the
    /// negotiated state (at once for an adopted connection). Fails if INIT was refused (protocol
    /// too old), if a loop ended before INIT, or on timeout (`ErrorKind::TimedOut`).
    pub fn wait_init(&self, timeout: Duration) -> io::Result<ConnState> {
        let guard = self.init_result.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .init_cv
            .wait_timeout_while(guard, timeout, |r| r.is_none())
            .unwrap_or_else(|e| e.into_inner());
        match &*guard {
            Some(Ok(())) => Ok(self.state()),
            Some(Err(why)) => Err(io::Error::other(why.clone())),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("FUSE_INIT not answered within {timeout:?}"),
            )),
        }
    }

    /// Records how INIT went (first call wins) and wakes `wait_init`.
    fn settle_init(&self, result: Result<(), String>) {
        let mut r = self.init_result.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(result);
        }
        self.init_settled.store(true, Ordering::Release);
        self.init_cv.notify_all();
    }

    /// Asks every loop to return after the request it is handling (or the next one it reads).
    /// The fd stays open and the connection alive: another loop can take over.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Serves requests from `fd` until the connection ends (ENODEV: unmounted, or DESTROY) or
    /// `stop` was called. Call it from as many threads as wanted with the same fd.
    pub fn serve(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let result = self.serve_loop(fd);
        if !self.init_settled.load(Ordering::Acquire) {
            self.settle_init(Err(match &result {
                Ok(()) => "the FUSE loop ended before FUSE_INIT".to_owned(),
                Err(e) => format!("the FUSE loop failed before FUSE_INIT: {e}"),
            }));
        }
        result
    }

    fn serve_loop(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // Zeroed, so lazily backed: pages the kernel never writes to cost nothing.
        let mut buf = vec![0u8; BUFFER_SIZE];
        while !self.stop.load(Ordering::SeqCst) {
            let n = match read(fd, &mut buf) {
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                    Some(libc::ENODEV) => return Ok(()),
                    _ => return Err(e),
                },
            };
            let (reply, last) = match self.handle(&buf[..n]) {
                Outcome::Silent => continue,
                Outcome::Reply(r) => (r, false),
                Outcome::ReplyAndStop(r) => (r, true),
                Outcome::Stall(name) => stall(&name),
            };
            match write(fd, &reply) {
                Ok(_) => {
                    // The INIT reply is out: `wait_init` may return.
                    if !self.init_settled.load(Ordering::Relaxed) && self.init.get().is_some() {
                        self.settle_init(Ok(()));
                    }
                }
                // The request was interrupted and is gone.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
                Err(e) => warn!(error = %e, "writing a FUSE reply failed"),
            }
            if last {
                self.stop();
                return Ok(());
            }
        }
        Ok(())
    }

    /// Answers one request (`msg`: header + body as read from the device).
    fn handle(&self, msg: &[u8]) -> Outcome {
        let h = match InHeader::decode(msg) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "dropping a FUSE request");
                return Outcome::Silent;
            }
        };
        let end = (h.len as usize).min(msg.len());
        let body = msg.get(abi::IN_HEADER_LEN..end).unwrap_or_default();
        let unique = h.unique;
        let err = |errno: i32| Outcome::Reply(abi::reply_error(unique, errno).to_vec());
        let ok = |b: &[u8]| Outcome::Reply(abi::reply(unique, b));

        if h.opcode == op::INIT {
            return self.init(unique, body);
        }
        if self.init.get().is_none() {
            warn!(opcode = h.opcode, "FUSE request before INIT");
            return err(libc::EIO);
        }
        let c = &self.counts;
        match h.opcode {
            op::LOOKUP => {
                bump(&c.lookup);
                let Ok(name) = abi::decode_name(body) else {
                    return err(libc::EIO);
                };
                match self.fs.lookup(h.nodeid, OsStr::from_bytes(name)) {
                    Ok(attr) => ok(&abi::encode_entry_out(&attr, self.ttl)),
                    Err(e) => err(e.errno()),
                }
            }
            op::FORGET => {
                bump(&c.forget);
                if let Ok(n) = abi::decode_forget(body) {
                    self.fs.forget(h.nodeid, n);
                }
                Outcome::Silent
            }
            op::BATCH_FORGET => {
                if let Ok(items) = abi::decode_batch_forget(body) {
                    for (ino, n) in items {
                        bump(&c.forget);
                        self.fs.forget(ino, n);
                    }
                }
                Outcome::Silent
            }
            op::GETATTR => {
                bump(&c.getattr);
                match self.fs.getattr(h.nodeid) {
                    Ok(attr) => ok(&abi::encode_attr_out(&attr, self.ttl)),
                    Err(e) => err(e.errno()),
                }
            }
            op::READ => {
                bump(&c.read);
                let Ok(r) = ReadIn::decode(body) else {
                    return err(libc::EIO);
                };
                if let Some(name) = &self.stall_read
                    && self.fs.node_name(h.nodeid).as_deref() == Some(name.as_str())
                {
                    return Outcome::Stall(name.clone());
                }
                match self.fs.read(h.nodeid, r.offset, r.size) {
                    Ok(data) => ok(data.bytes()),
                    Err(e) => err(e.errno()),
                }
            }
            op::READDIR => {
                bump(&c.readdir);
                let Ok(r) = ReadIn::decode(body) else {
                    return err(libc::EIO);
                };
                match self.fs.readdir(h.nodeid, r.offset) {
                    Ok(entries) => {
                        let limit = r.size as usize;
                        let mut out = Vec::with_capacity(limit.min(64 * 1024));
                        for e in entries {
                            if !abi::push_dirent(
                                &mut out,
                                limit,
                                e.ino,
                                e.next_offset,
                                e.kind,
                                e.name.as_bytes(),
                            ) {
                                break;
                            }
                        }
                        ok(&out)
                    }
                    Err(e) => err(e.errno()),
                }
            }
            op::STATFS => {
                bump(&c.other);
                ok(&Statfs {
                    bsize: 4096,
                    namelen: 255,
                    frsize: 4096,
                    ..Statfs::default()
                }
                .encode())
            }
            op::RELEASE | op::RELEASEDIR => {
                bump(&c.other);
                ok(&[])
            }
            op::INTERRUPT => Outcome::Silent,
            op::DESTROY => Outcome::ReplyAndStop(abi::reply(unique, &[])),
            code if abi::is_write_op(code) => {
                bump(&c.other);
                err(libc::EROFS)
            }
            // OPEN, OPENDIR, FLUSH, GETXATTR, LISTXATTR, ACCESS and everything unknown.
            _ => {
                bump(&c.other);
                err(libc::ENOSYS)
            }
        }
    }

    fn init(&self, unique: u64, body: &[u8]) -> Outcome {
        let err = |errno: i32| Outcome::Reply(abi::reply_error(unique, errno).to_vec());
        let Ok(k) = InitIn::decode(body) else {
            return err(libc::EIO);
        };
        if k.major != 7 || k.minor < MIN_MINOR {
            warn!(
                major = k.major,
                minor = k.minor,
                "unsupported FUSE protocol version"
            );
            self.settle_init(Err(format!(
                "the kernel speaks FUSE {}.{}, at least 7.{MIN_MINOR} is needed",
                k.major, k.minor
            )));
            return err(libc::EPROTO);
        }
        let out = InitOut {
            major: 7,
            minor: k.minor.min(SUPPORTED_MINOR),
            max_readahead: k.max_readahead,
            flags: k.flags & abi::FUSE_ASYNC_READ,
            max_background: 16,
            congestion_threshold: 12,
            max_write: MAX_WRITE,
            time_gran: 1,
            max_pages: 32,
        };
        let state = ConnState {
            major: out.major,
            minor: out.minor,
            flags: out.flags,
            max_write: out.max_write,
        };
        // Before the reply goes out: the kernel sends other requests only after it, and
        // another thread may read the first one.
        if self.init.set(state).is_err() {
            debug!("repeated FUSE_INIT");
        }
        Outcome::Reply(abi::reply(unique, &out.encode()))
    }
}

/// Test-only fault injection (`FAULT_STALL_READ_ENV`): the READ just read is never answered
/// and this loop thread parks forever.
fn stall(name: &str) -> ! {
    warn!(
        name,
        "fault injection: stalling a READ (BAOFS_FAULT_STALL_READ)"
    );
    let _ = writeln!(
        io::stderr(),
        "baofs: fault injection: stalling READ of {name}"
    );
    loop {
        std::thread::park();
    }
}

/// Serves `fs` on `fd` in this thread until unmount, DESTROY or an error (see
/// `Server::serve`). For several threads, or to stop a loop, share one `Server` instead.
pub fn serve(fd: BorrowedFd<'_>, fs: Arc<Fs>, ttl: Duration, state: ConnState) -> io::Result<()> {
    Server::new(fs, ttl, state).serve(fd)
}

/// Writes one notification (e.g. `encode_notify_delete`, `encode_notify_resend`) to the
/// connection.
pub fn notify(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    let n = write(fd, msg)?;
    if n != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write of a FUSE notification",
        ));
    }
    Ok(())
}

fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call, and
    // `fd` is a live descriptor borrowed for it.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call, and
    // `fd` is a live descriptor borrowed for it.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests;
