//! Reads shared across volumes (issue 6): one OpenBao read per distinct static secret per poll,
//! whatever the number of volumes reading it.
//!
//! A read is shared under a [`ShareKey`]: a digest of everything that determines the answer and
//! the right to see it (address, namespace, TLS configuration and the files it names, and the
//! caller's identity: a hash of a raw token, or the login identity of a JWT, see
//! `auth::LoginKey`), plus the API path and query. Only `GET` requests are shared, and only
//! responses without a lease: a response with a lease (a dynamic secret) marks the key dynamic
//! and every volume then issues its own.
//!
//! Each key has an async slot. The first caller makes the request while holding it; callers
//! that arrive meanwhile wait (single flight) and take its outcome, success or failure. A
//! successful response stays usable for `window` after it was fetched (half the poll interval
//! in `baofs csi`), so volumes polling within that window share it; a failure is only handed to
//! the callers that waited for it. Cached responses are wiped when replaced or pruned.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use serde_json::Value;

use super::{ProviderError, kv};

/// Most keys kept; beyond this, idle entries are dropped.
const MAX_ENTRIES: usize = 16384;
/// Shortest time between two sweeps of stale entries.
const MIN_PRUNE_PERIOD: Duration = Duration::from_secs(1);

/// A SHA-256 over length-prefixed parts (no two part lists collide by concatenation).
pub(crate) fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What a shared read is keyed by: the caller's identity digest (address, namespace, TLS and
/// credential identity), the path and the query. Holds no secret, only digests.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ShareKey {
    pub(crate) identity: [u8; 32],
    pub(crate) path: String,
    pub(crate) query: Option<String>,
}

impl fmt::Debug for ShareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A cached response, wiped when the last volume using it lets it go.
pub(crate) struct SharedValue(Value);

impl SharedValue {
    pub(crate) fn new(v: Value) -> Self {
        Self(v)
    }

    pub(crate) fn value(&self) -> &Value {
        &self.0
    }
}

impl Drop for SharedValue {
    fn drop(&mut self) {
        kv::zeroize_value(std::mem::take(&mut self.0));
    }
}

impl fmt::Debug for SharedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedValue(<redacted>)")
    }
}

/// The outcome of a key's last request.
#[derive(Debug)]
pub(crate) enum Shared {
    /// A static response.
    Value(Arc<SharedValue>),
    /// The path answers with leases: never shared.
    Dynamic,
    /// The request failed (OpenBao's answer; login failures are not kept).
    Failed(ProviderError),
}

/// A key's last outcome and when it completed.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) at: Instant,
    pub(crate) shared: Shared,
}

impl Outcome {
    /// What a caller that started waiting at `arrived` may use at `now`, if anything.
    pub(crate) fn usable(
        &self,
        arrived: Instant,
        now: Instant,
        window: Duration,
    ) -> Option<&Shared> {
        let waited_for_it = self.at >= arrived;
        let ok = match &self.shared {
            Shared::Dynamic => true,
            Shared::Value(_) => waited_for_it || now.saturating_duration_since(self.at) < window,
            Shared::Failed(_) => waited_for_it,
        };
        ok.then_some(&self.shared)
    }

    fn is_stale(&self, now: Instant, window: Duration) -> bool {
        match &self.shared {
            Shared::Dynamic => false,
            Shared::Value(_) | Shared::Failed(_) => {
                now.saturating_duration_since(self.at) >= window
            }
        }
    }
}

/// One key's slot: held across the request so concurrent callers wait for it.
pub(crate) type ReadSlot = Arc<tokio::sync::Mutex<Option<Outcome>>>;

/// The shared-read table.
pub(crate) struct SharedReads {
    window: Duration,
    slots: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    slots: HashMap<ShareKey, ReadSlot>,
    last_prune: Option<Instant>,
}

impl SharedReads {
    /// A table whose responses stay usable for `window`.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            slots: Mutex::new(Table::default()),
        }
    }

    /// How long a response stays usable.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// The slot for `key`, created if needed. Sweeps stale entries now and then.
    pub(crate) fn slot(&self, key: &ShareKey) -> ReadSlot {
        let now = Instant::now();
        let mut table = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let period = self.window.max(MIN_PRUNE_PERIOD);
        if table
            .last_prune
            .is_none_or(|t| now.saturating_duration_since(t) >= period)
            || table.slots.len() >= MAX_ENTRIES
        {
            table.last_prune = Some(now);
            prune(&mut table.slots, now, self.window);
        }
        if let Some(s) = table.slots.get(key) {
            return Arc::clone(s);
        }
        let slot = ReadSlot::default();
        table.slots.insert(key.clone(), Arc::clone(&slot));
        slot
    }

    /// Number of keys held (tests, `Debug`).
    pub(crate) fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slots
            .len()
    }
}

/// Wipes stale outcomes and drops their slots when nobody uses them; when still too many,
/// drops every idle slot.
fn prune(slots: &mut HashMap<ShareKey, ReadSlot>, now: Instant, window: Duration) {
    slots.retain(|_, slot| {
        if Arc::strong_count(slot) > 1 {
            return true;
        }
        match slot.try_lock() {
            Ok(mut guard) => {
                if guard.as_ref().is_some_and(|o| !o.is_stale(now, window)) {
                    true
                } else {
                    *guard = None;
                    false
                }
            }
            Err(_) => true,
        }
    });
    if slots.len() >= MAX_ENTRIES {
        slots.retain(|_, slot| Arc::strong_count(slot) > 1);
    }
}

impl fmt::Debug for SharedReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedReads")
            .field("window", &self.window)
            .field("entries", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(path: &str, id: u8) -> ShareKey {
        ShareKey {
            identity: [id; 32],
            path: path.into(),
            query: None,
        }
    }

    #[test]
    fn digest_is_length_prefixed() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
        assert_eq!(digest(&[b"a"]), digest(&[b"a"]));
    }

    #[test]
    fn values_are_usable_within_the_window_failures_only_by_waiters() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let w = Duration::from_secs(10);
        let v = Outcome {
            at: s(5),
            shared: Shared::Value(Arc::new(SharedValue(json!({"data": {"k": "v"}})))),
        };
        assert!(v.usable(s(6), s(14), w).is_some(), "within the window");
        assert!(v.usable(s(6), s(15), w).is_none(), "after the window");
        assert!(v.usable(s(4), s(30), w).is_some(), "waited for it");
        let f = Outcome {
            at: s(5),
            shared: Shared::Failed(ProviderError::Client("x".into())),
        };
        assert!(f.usable(s(4), s(5), w).is_some());
        assert!(
            f.usable(s(6), s(6), w).is_none(),
            "a later caller tries again"
        );
        let d = Outcome {
            at: s(5),
            shared: Shared::Dynamic,
        };
        assert!(matches!(d.usable(s(100), s(100), w), Some(Shared::Dynamic)));
    }

    #[tokio::test]
    async fn slots_are_per_key_and_pruned_when_stale() {
        let reads = SharedReads::new(Duration::ZERO);
        let a = reads.slot(&key("secret/data/a", 1));
        assert!(Arc::ptr_eq(&a, &reads.slot(&key("secret/data/a", 1))));
        assert!(!Arc::ptr_eq(&a, &reads.slot(&key("secret/data/a", 2))));
        *a.lock().await = Some(Outcome {
            at: Instant::now(),
            shared: Shared::Value(Arc::new(SharedValue(json!("v")))),
        });
        drop(a);
        let mut table = reads.slots.lock().unwrap_or_else(PoisonError::into_inner);
        prune(&mut table.slots, Instant::now(), Duration::ZERO);
        assert!(table.slots.is_empty());
    }

    #[test]
    fn debug_shows_no_identity_or_value() {
        let k = key("secret/data/a", 7);
        assert!(!format!("{k:?}").contains("7, 7"));
        let v = SharedValue(json!({"password": "hunter2"}));
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
