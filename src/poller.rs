//! The poller stage: keeps each volume's values fresh.
//!
//! ```text
//! poller ─> provider ─> cache swap ─> kernel invalidation ─> (later: Secret sync, pod status, events)
//! ```
//!
//! Every interval (with ±10 % jitter, so volumes published together do not poll in lockstep)
//! the poller refetches a volume. A file gets a new version only if its bytes changed. The new
//! snapshot is published first, then the old names are invalidated, and only then is the poll
//! complete: from that moment every new open sees the new version. On failure the last-known
//! values keep being served and the poll is retried with backoff; nothing is ever unmounted by
//! the poller. The poller holds no lock the read path needs.
//!
//! A fetch may ask for an earlier poll (`FetchedObject::refresh_at`: a dynamic secret's lease
//! to renew at two thirds of it, or to re-issue); the next poll then comes at that time if it is
//! before the regular one. Renewed or re-issued values go through `CachedVolume::replace` like
//! any other: an unchanged value keeps its inode, a re-issued one is a new version.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cache::{CacheError, CachedVolume, ChangeSet};
use crate::fs::{Fs, Invalidation};
use crate::fuse::InvalidatorHandle;
use crate::observer::{ObjectValue, VolumeEvent, VolumeObserver, VolumeView};
use crate::provider::{BoxFuture, FetchedObject, Provider, ProviderError};
use crate::spc::ObjectPath;
use crate::volume::VolumeSpec;

/// Where the poller sends kernel invalidations (the FUSE invalidator; a recorder in tests).
pub trait Notify: Send + Sync {
    /// Delivers `items`; resolves when the kernel has them.
    fn invalidate(&self, items: Vec<Invalidation>) -> BoxFuture<'_, ()>;
}

impl Notify for InvalidatorHandle {
    fn invalidate(&self, items: Vec<Invalidation>) -> BoxFuture<'_, ()> {
        Box::pin(InvalidatorHandle::invalidate(self, items))
    }
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The provider failed; the last-known values are still served.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The fetched objects did not fit the volume.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Refreshes volumes from the provider.
pub struct Poller {
    provider: Arc<dyn Provider>,
    fs: Arc<Fs>,
    notify: Arc<dyn Notify>,
    observer: Arc<dyn VolumeObserver>,
    interval: Duration,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Shortest wait before a poll asked for by a refresh deadline (already due ones included).
const MIN_REFRESH_WAIT: Duration = Duration::from_millis(100);

/// The earliest refresh deadline of a fetch.
pub fn earliest_refresh(fetched: &[FetchedObject]) -> Option<SystemTime> {
    fetched.iter().filter_map(|o| o.refresh_at).min()
}

/// A duration within ±10 % of `base`, from a cheap per-call seed.
fn jittered(base: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // x in [0, 1000): factor in [0.9, 1.1)
    let x = u64::from(nanos.wrapping_mul(2_654_435_761) % 1000);
    let base_ms = base.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(base_ms * (900 + x / 5) / 1000).max(Duration::from_millis(1))
}

impl Poller {
    /// A poller refetching every `interval`.
    pub fn new(
        provider: Arc<dyn Provider>,
        fs: Arc<Fs>,
        notify: Arc<dyn Notify>,
        observer: Arc<dyn VolumeObserver>,
        interval: Duration,
    ) -> Self {
        Self {
            provider,
            fs,
            notify,
            observer,
            interval,
        }
    }

    /// One poll of one volume: fetch, swap, invalidate. Returns what changed once new opens see
    /// it.
    pub async fn poll_once(
        &self,
        spec: &VolumeSpec,
        volume: &CachedVolume,
    ) -> Result<ChangeSet, PollError> {
        self.poll_refresh(spec, volume).await.map(|(c, _)| c)
    }

    /// `poll_once`, also returning the earliest refresh deadline the provider asked for.
    async fn poll_refresh(
        &self,
        spec: &VolumeSpec,
        volume: &CachedVolume,
    ) -> Result<(ChangeSet, Option<SystemTime>), PollError> {
        let fetched = self.provider.fetch(spec).await?;
        let refresh = earliest_refresh(&fetched);
        let changes = volume.replace(fetched)?;
        if !changes.is_empty() {
            let items = self.fs.invalidations(&changes);
            self.notify.invalidate(items).await;
        }
        Ok((changes, refresh))
    }

    /// Polls `volume` until `stop` turns true, recording each outcome in `volume.health`.
    pub async fn run(&self, volume: Arc<PolledVolume>, mut stop: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            let wait = if failures == 0 {
                let regular = jittered(self.interval);
                match volume.refresh_at() {
                    Some(at) => regular.min(
                        at.duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO)
                            .max(MIN_REFRESH_WAIT),
                    ),
                    None => regular,
                }
            } else {
                // 1 s, 2 s, 4 s ... but never slower than the normal interval.
                let backoff = Duration::from_secs(1) * 2u32.saturating_pow(failures - 1).min(64);
                jittered(backoff.min(self.interval))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let spec = volume.spec.load_full();
            let started = std::time::Instant::now();
            let result =
                self.poll_refresh(&spec, &volume.cached)
                    .await
                    .map(|(changes, refresh)| {
                        volume.set_refresh_at(refresh);
                        changes
                    });
            let elapsed = started.elapsed();
            volume.record(&result);
            match result {
                Ok(changes) if changes.is_empty() => {
                    debug!(volume = %spec.id, spc = %spec.spc_ref(), "poll: no change");
                    failures = 0;
                    self.observer
                        .observe(&volume.view(), VolumeEvent::Unchanged { elapsed })
                        .await;
                }
                Ok(changes) => {
                    let changed: Vec<ObjectPath> =
                        changes.changed.iter().map(|c| c.path.clone()).collect();
                    let objects: Vec<&str> = changed.iter().map(ObjectPath::as_str).collect();
                    info!(volume = %spec.id, spc = %spec.spc_ref(), ?objects, "rotated");
                    failures = 0;
                    let view = volume.view();
                    self.observer
                        .observe(
                            &view,
                            VolumeEvent::Rotated {
                                changed: &changed,
                                elapsed,
                            },
                        )
                        .await;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    warn!(
                        volume = %spec.id,
                        spc = %spec.spc_ref(),
                        error = %e,
                        failures,
                        "poll failed; serving the last-known values"
                    );
                    let error = e.to_string();
                    let view = volume.view();
                    self.observer
                        .observe(
                            &view,
                            VolumeEvent::RotationFailed {
                                error: &error,
                                elapsed,
                            },
                        )
                        .await;
                }
            }
        }
    }
}

/// How a volume's polling is going (for `baofs status`; never holds a value).
#[derive(Debug, Clone, Default)]
pub struct PollHealth {
    /// When the last successful fetch completed.
    pub last_success: Option<SystemTime>,
    /// The last failure, if the most recent poll failed.
    pub last_error: Option<String>,
    /// Consecutive failures.
    pub failures: u32,
}

/// A volume as the poller sees it: its spec (swapped on republish, e.g. a fresh token), its
/// cached values and its health.
#[derive(Debug)]
pub struct PolledVolume {
    /// The current spec; a republish stores a new one with fresh credentials.
    pub spec: ArcSwap<VolumeSpec>,
    /// The cached values.
    pub cached: Arc<CachedVolume>,
    /// Where the volume is mounted.
    pub target: PathBuf,
    health: Mutex<PollHealth>,
    /// When the provider wants the next poll, if earlier than the interval.
    refresh_at: Mutex<Option<SystemTime>>,
}

impl PolledVolume {
    /// A volume whose first fetch just succeeded.
    pub fn new(spec: VolumeSpec, cached: Arc<CachedVolume>, target: PathBuf) -> Self {
        Self {
            spec: ArcSwap::from_pointee(spec),
            cached,
            target,
            health: Mutex::new(PollHealth {
                last_success: Some(SystemTime::now()),
                ..PollHealth::default()
            }),
            refresh_at: Mutex::new(None),
        }
    }

    /// Marks a volume restored without values (after a restart): unhealthy until a poll
    /// succeeds.
    pub fn mark_failed(&self, error: &str) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.last_success = None;
        h.last_error = Some(error.to_owned());
        h.failures = 1;
    }

    /// Records when the provider wants the next poll (from the last successful fetch).
    pub fn set_refresh_at(&self, at: Option<SystemTime>) {
        *self.refresh_at.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// When the provider wants the next poll, if it asked for one.
    pub fn refresh_at(&self) -> Option<SystemTime> {
        *self.refresh_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, result: &Result<ChangeSet, PollError>) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => {
                h.last_success = Some(SystemTime::now());
                h.last_error = None;
                h.failures = 0;
            }
            Err(e) => {
                h.last_error = Some(e.to_string());
                h.failures = h.failures.saturating_add(1);
            }
        }
    }

    /// The volume as it is served now (for observers).
    pub fn view(&self) -> VolumeView {
        let spec = self.spec.load_full();
        let snap = self.cached.snapshot();
        let objects = spec
            .spc
            .objects
            .iter()
            .enumerate()
            .filter_map(|(i, o)| {
                let v = snap.version(self.cached.layout.object_node(i)?)?;
                Some(ObjectValue {
                    path: o.path.clone(),
                    generation: v.generation,
                    version: v.id.clone(),
                    value: v.value.clone(),
                })
            })
            .collect();
        VolumeView {
            spec,
            target: self.target.clone(),
            objects,
        }
    }

    /// A copy of the current health.
    pub fn health(&self) -> PollHealth {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(100));
            assert!(
                d >= Duration::from_secs(90) && d < Duration::from_secs(110),
                "{d:?}"
            );
        }
    }
}
