//! Kernel invalidation, on a thread of its own.
//!
//! A FUSE notification can block in the kernel until a request one of our loops is serving
//! completes (`invalidate_inode_pages2_range` waits on locked pages), so notifications are never
//! sent from a FUSE loop thread nor while holding a lock the read path needs. The poller
//! publishes the new snapshot first, then queues the notifications here and waits for them, so a
//! poll "completes" only when new opens will see the new version.
//!
//! Each notification is one `write(2)` of `raw::encode_notify_delete` on the hub's connection
//! fd (shared with the loops; a notification has `unique` 0, so it never pairs with a request).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, mpsc};
use std::thread;

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::raw;
use crate::fs::Invalidation;

struct Job {
    items: Vec<Invalidation>,
    done: oneshot::Sender<()>,
}

/// Cloneable handle to queue invalidations. It holds no FUSE types.
#[derive(Clone, Debug)]
pub struct InvalidatorHandle {
    tx: mpsc::Sender<Job>,
}

impl InvalidatorHandle {
    /// Sends `items` to the kernel and resolves when they were delivered (or the connection is
    /// gone). Failures are logged as warnings: a stale name expires with its entry TTL anyway.
    pub async fn invalidate(&self, items: Vec<Invalidation>) {
        if items.is_empty() {
            return;
        }
        let (done, rx) = oneshot::channel();
        if self.tx.send(Job { items, done }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts the invalidation thread, writing to the connection `fd`. It ends when every handle is
/// dropped (and closes its reference to the fd then).
pub fn spawn(fd: Arc<OwnedFd>) -> std::io::Result<InvalidatorHandle> {
    let (tx, rx) = mpsc::channel::<Job>();
    thread::Builder::new()
        .name("baofs-inval".into())
        .spawn(move || {
            for job in rx {
                for inv in &job.items {
                    // FUSE_NOTIFY_DELETE: drops the dentry and clears the old inode's nlink, so
                    // the next lookup returns the new inode; open fds keep the old version.
                    let msg = raw::encode_notify_delete(inv.parent, inv.child, inv.name.as_bytes());
                    match raw::notify(fd.as_fd(), &msg) {
                        Ok(()) => {
                            debug!(parent = inv.parent, child = inv.child, "entry invalidated")
                        }
                        // The kernel had no such entry cached (already evicted or forgotten):
                        // nothing to invalidate, which is what we wanted.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => debug!(
                            parent = inv.parent,
                            child = inv.child,
                            "entry not cached by the kernel: nothing to invalidate"
                        ),
                        Err(e) => warn!(
                            parent = inv.parent,
                            child = inv.child,
                            error = %e,
                            "kernel invalidation failed; the old name expires with its TTL"
                        ),
                    }
                }
                let _ = job.done.send(());
            }
        })?;
    Ok(InvalidatorHandle { tx })
}
