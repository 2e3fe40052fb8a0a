//! Kernel invalidation, on a thread of its own.
//!
//! A FUSE notification can block in the kernel until a request one of our loops is serving
//! completes (`invalidate_inode_pages2_range` waits on locked pages), so notifications are never
//! sent from a FUSE callback nor while holding a lock the read path needs. The poller publishes
//! the new snapshot first, then queues the notifications here and waits for them, so a poll
//! "completes" only when new opens will see the new version.

use std::ffi::OsStr;
use std::sync::mpsc;
use std::thread;

use fuser::{INodeNo, Notifier};
use tokio::sync::oneshot;
use tracing::{debug, warn};

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

/// Starts the invalidation thread. It ends when every handle is dropped.
pub fn spawn(notifier: Notifier) -> std::io::Result<InvalidatorHandle> {
    let (tx, rx) = mpsc::channel::<Job>();
    thread::Builder::new()
        .name("baofs-inval".into())
        .spawn(move || {
            for job in rx {
                for inv in &job.items {
                    // FUSE_NOTIFY_DELETE: drops the dentry and clears the old inode's nlink, so
                    // the next lookup returns the new inode; open fds keep the old version.
                    match notifier.delete(
                        INodeNo(inv.parent),
                        INodeNo(inv.child),
                        OsStr::new(&inv.name),
                    ) {
                        Ok(()) => {
                            debug!(parent = inv.parent, child = inv.child, "entry invalidated")
                        }
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
