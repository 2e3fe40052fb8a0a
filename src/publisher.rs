//! Publish and unpublish: the use cases behind `baofs mount` and CSI NodePublish/Unpublish.
//!
//! ```text
//! publish(spec, target):  target checks ─> provider.fetch ─> cache.insert ─> hub.bind ─> poller
//! unpublish(target):      stop poller ─> hub.unbind (lazy if busy) ─> cache.remove (wiped on forget)
//!                         ─> provider.release (dynamic secrets' leases revoked)
//! ```
//!
//! The publisher owns the process's one FUSE hub, the cache and the per-volume pollers. Calls
//! for one target are serialized (a per-target async lock); calls for different targets run in
//! parallel. Nothing is mounted until every object was fetched, and a failure after mounting
//! undoes the mount: a target is either fully published or untouched.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cache::{CacheError, Layout, SecretCache};
use crate::fs::Fs;
use crate::fuse::{self, FuseError, Hub, Unmounted};
use crate::observer::{VolumeEvent, VolumeObserver};
use crate::poller::{PollHealth, PolledVolume, Poller, earliest_refresh};
use crate::provider::{BoxFuture, Provider, ProviderError};
use crate::takeover::{
    Checkpoint, CheckpointSource, Checkpointer, CredentialKind, FileRecord, Handover, PodRecord,
    RestoredVolume, Secrets, VolumeRecord,
};
use crate::volume::{Credentials, VolumeSpec};

/// How the publisher runs.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Node-local state: the hub is mounted at `<state_dir>/hub-<pid>`. Never holds a value.
    pub state_dir: PathBuf,
    /// Poll interval; `None` disables rotation (upstream's `--enable-secret-rotation=false`).
    pub rotation: Option<Duration>,
    /// FUSE loops of the hub (at least 2).
    pub fuse_threads: usize,
    /// Create a missing target directory (CSI) instead of refusing it (`baofs mount`).
    pub create_missing_targets: bool,
}

/// The stages after the cache: who hears about publishes, rotations and unpublishes.
pub type Observer = Arc<dyn VolumeObserver>;

/// Result of a successful publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Fetched and mounted.
    Mounted,
    /// Already mounted with this volume: the new credentials are kept for the poller; nothing
    /// was fetched, nothing can fail.
    Republished,
}

/// Result of a successful unpublish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpublished {
    /// Unmounted (lazily if files were open).
    Unmounted,
    /// Nothing of ours was mounted there.
    NotMounted,
}

/// Why a publish or unpublish failed. Nothing is left mounted when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The target path cannot be used.
    #[error("target {target}: {reason}")]
    InvalidTarget {
        /// The target.
        target: PathBuf,
        /// Why.
        reason: String,
    },
    /// The target already holds another volume.
    #[error("target {target} already holds volume '{volume}'")]
    Conflict {
        /// The target.
        target: PathBuf,
        /// The volume mounted there.
        volume: String,
    },
    /// Fetching failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The volume does not fit the cache (invalid id, too many files, already published).
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Mounting failed.
    #[error(transparent)]
    Fuse(#[from] FuseError),
    /// The state directory is unusable.
    #[error("state directory {path}: {source}")]
    State {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One published volume.
#[derive(Debug)]
struct Mounted {
    target: PathBuf,
    volume: Arc<PolledVolume>,
    created_target: bool,
    published_at: SystemTime,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Status of one object of a published volume (no value).
#[derive(Debug, Clone)]
pub struct ObjectStatus {
    /// `objectName`.
    pub name: String,
    /// Content generation: 1 at publish, +1 per change.
    pub generation: u32,
    /// The provider's opaque version (as in SecretProviderClassPodStatus).
    pub version: String,
    /// Size in bytes.
    pub size: usize,
    /// When this version was fetched.
    pub fetched_at: SystemTime,
}

/// Status of one published volume (no value).
#[derive(Debug, Clone)]
pub struct VolumeStatus {
    /// Volume id.
    pub volume_id: String,
    /// Where it is mounted.
    pub target: PathBuf,
    /// `namespace/name` of the SPC.
    pub spc: String,
    /// Pod namespace, name and uid, if known.
    pub pod: crate::volume::PodInfo,
    /// When it was published.
    pub published_at: SystemTime,
    /// Polling health.
    pub health: PollHealth,
    /// Objects.
    pub objects: Vec<ObjectStatus>,
}

/// Publishes volumes onto the process's FUSE hub.
pub struct Publisher {
    config: PublisherConfig,
    provider: Arc<dyn Provider>,
    observer: Observer,
    cache: Arc<SecretCache>,
    fs: Arc<Fs>,
    hub: Mutex<Option<Hub>>,
    hub_dir: PathBuf,
    poller: Option<Arc<Poller>>,
    volumes: Mutex<HashMap<PathBuf, Arc<Mounted>>>,
    target_locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    /// Set when a holder keeps the hub: every change is checkpointed to it.
    checkpointer: Arc<OnceLock<Arc<Checkpointer>>>,
    /// Publish and unpublish hold it shared; a handoff takes it exclusively and sets it, after
    /// which they are refused (the successor serves them).
    gate: tokio::sync::RwLock<bool>,
    /// The provider's version key, handed to a successor with the credentials.
    handover: Mutex<Option<Arc<dyn Handover>>>,
    /// Targets of dead processes' volumes detached at start (their pods lost the volume).
    lost: Mutex<Vec<PathBuf>>,
    /// How this process started, for `baofs status`.
    origin: Mutex<String>,
}

/// The poller's observer: the real one, plus a checkpoint request after each rotation (new
/// generations must reach the holder before a crash could lose them).
struct CheckpointingObserver {
    inner: Observer,
    checkpointer: Arc<OnceLock<Arc<Checkpointer>>>,
}

impl VolumeObserver for CheckpointingObserver {
    fn observe<'a>(
        &'a self,
        view: &'a crate::observer::VolumeView,
        event: VolumeEvent<'a>,
    ) -> BoxFuture<'a, ()> {
        if let (VolumeEvent::Rotated { .. }, Some(c)) = (&event, self.checkpointer.get()) {
            c.mark();
        }
        self.inner.observe(view, event)
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("hub_dir", &self.hub_dir)
            .field("volumes", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// Cleans up after baofs processes of this state directory that died without unmounting
/// (SIGKILL, crash): their FUSE connection is gone, so their hub and every target bound from it
/// answer ENOTCONN ("Transport endpoint is not connected"). Each such target is detached
/// (lazily: never blocks on a busy mount) and logged with its path, which names the pod; then the
/// hub goes. Mounts of live processes are never touched: a target is matched to a dead hub by
/// the device number all bind mounts of one connection share.
///
/// `keep` is a hub being taken over (its process is gone, its connection is not). A hub named
/// with our own pid is stale too: in a container every restart may get the same pid.
fn clean_stale_hubs(state_dir: &Path, keep: Option<&Path>) -> Vec<PathBuf> {
    let mut lost = Vec::new();
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return lost;
    };
    let mounts = fuse::mount::mounts().unwrap_or_default();
    let keep = keep.map(|k| std::fs::canonicalize(k).unwrap_or_else(|_| k.to_owned()));
    let own = std::process::id().to_string();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("hub-")) else {
            continue;
        };
        if pid != own && Path::new("/proc").join(pid).exists() {
            continue;
        }
        let path = std::fs::canonicalize(entry.path()).unwrap_or_else(|_| entry.path());
        if keep.as_deref() == Some(path.as_path()) {
            continue;
        }
        if let Some(hub) = mounts
            .iter()
            .find(|m| m.mount_point == path && m.fstype.starts_with("fuse.baofs"))
        {
            for m in mounts
                .iter()
                .filter(|m| m.dev == hub.dev && m.mount_point != path)
            {
                match fuse::mount::unmount(&m.mount_point) {
                    Ok(how) => {
                        warn!(
                            target = %m.mount_point.display(),
                            volume = %m.root,
                            ?how,
                            "detached a volume of a dead baofs process (its reads failed with ENOTCONN)"
                        );
                        lost.push(m.mount_point.clone());
                    }
                    Err(e) => warn!(
                        target = %m.mount_point.display(),
                        error = %e,
                        "cannot detach a volume of a dead baofs process"
                    ),
                }
            }
        }
        match fuse::mount::unmount(&path) {
            Ok(Unmounted::NotMounted) => {}
            Ok(how) => warn!(hub = %path.display(), ?how, "unmounted the hub of a dead process"),
            Err(e) => warn!(hub = %path.display(), error = %e, "cannot unmount a stale hub"),
        }
        let _ = std::fs::remove_dir(&path);
    }
    lost
}

/// A volume a takeover cannot restore (its SPC no longer parses, no slot, ...): its target is
/// detached, so its pod sees an empty directory instead of a mount nobody serves, and it is
/// reported as lost.
fn detach_unrestorable(record: &VolumeRecord, error: &str, lost: &mut Vec<PathBuf>) {
    warn!(
        volume = %record.volume_id,
        target = %record.target.display(),
        error,
        "cannot restore a volume: its target is detached"
    );
    let _ = fuse::mount::unmount(&record.target);
    lost.push(record.target.clone());
}

fn prepare_hub_dir(state_dir: &Path) -> Result<(PathBuf, Vec<PathBuf>), PublishError> {
    use std::os::unix::fs::PermissionsExt;
    let state_err = |source| PublishError::State {
        path: state_dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(state_err)?;
    let lost = clean_stale_hubs(state_dir, None);
    let hub = state_dir.join(format!("hub-{}", std::process::id()));
    match std::fs::create_dir(&hub) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(state_err(e)),
    }
    std::fs::set_permissions(&hub, std::fs::Permissions::from_mode(0o700)).map_err(state_err)?;
    Ok((hub, lost))
}

/// The volume's directory name in the hub: `<namespace>_<spc>_<volume id>`. It shows in
/// `findmnt` / mountinfo as the bind mount's root (`baofs[/harbor_harbor-secrets_csi-…]`), so
/// an operator sees which namespace and SPC a mount serves. Namespace and SPC names cannot
/// contain `_`, so the name is unambiguous; it is cut to 255 bytes keeping the volume id whole.
pub fn hub_name(spec: &VolumeSpec) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let ns = clean(spec.spc.namespace.as_deref().unwrap_or("-"));
    let max_spc = 255usize.saturating_sub(ns.len() + spec.id.len() + 2);
    let spc: String = clean(&spec.spc.name).chars().take(max_spc).collect();
    format!("{ns}_{spc}_{}", spec.id)
}

impl Publisher {
    /// Mounts the hub and returns a publisher with no volume.
    pub fn start(
        config: PublisherConfig,
        provider: Arc<dyn Provider>,
        observer: Observer,
    ) -> Result<Arc<Self>, PublishError> {
        let cache = Arc::new(SecretCache::new());
        let fs = Arc::new(Fs::new(Arc::clone(&cache)));
        let (hub_dir, lost) = prepare_hub_dir(&config.state_dir)?;
        let hub = match Hub::mount(&hub_dir, Arc::clone(&fs), config.fuse_threads) {
            Ok(hub) => hub,
            Err(e) => {
                let _ = std::fs::remove_dir(&hub_dir);
                return Err(e.into());
            }
        };
        Ok(Self::assemble(
            config, provider, observer, fs, hub, hub_dir, lost,
        ))
    }

    fn assemble(
        config: PublisherConfig,
        provider: Arc<dyn Provider>,
        observer: Observer,
        fs: Arc<Fs>,
        hub: Hub,
        hub_dir: PathBuf,
        lost: Vec<PathBuf>,
    ) -> Arc<Self> {
        let cache = Arc::clone(fs.cache());
        let checkpointer: Arc<OnceLock<Arc<Checkpointer>>> = Arc::default();
        let poller_observer: Observer = Arc::new(CheckpointingObserver {
            inner: Arc::clone(&observer),
            checkpointer: Arc::clone(&checkpointer),
        });
        let poller = config.rotation.map(|interval| {
            Arc::new(Poller::new(
                Arc::clone(&provider),
                Arc::clone(&fs),
                Arc::new(hub.invalidator()),
                poller_observer,
                interval,
            ))
        });
        Arc::new(Self {
            config,
            provider,
            observer,
            cache,
            fs,
            hub: Mutex::new(Some(hub)),
            hub_dir,
            poller,
            volumes: Mutex::new(HashMap::new()),
            target_locks: Mutex::new(HashMap::new()),
            checkpointer,
            gate: tokio::sync::RwLock::new(false),
            handover: Mutex::new(None),
            lost: Mutex::new(lost),
            origin: Mutex::new("fresh".to_owned()),
        })
    }

    /// Takes over the hub a previous process served (its connection kept by the holder):
    /// re-creates every volume in its old slot with its refetched values (unchanged files keep
    /// their inodes), serves the connection at once (the kernel resends what the dead process
    /// had read but not answered), retires what changed while nobody served, and resumes
    /// polling. Volumes whose values could not be fetched stay listed and are retried by the
    /// poller; their uncached files answer "not found" until then. Returns the publisher, how
    /// many volumes have values, and when the connection was served again. `exact`: the
    /// checkpoint is a handoff's final one, so the `+ 1`/`+ 2` generations a crashed owner may
    /// have handed out need no retiring.
    pub async fn take_over(
        config: PublisherConfig,
        provider: Arc<dyn Provider>,
        observer: Observer,
        checkpoint: &Checkpoint,
        fd: OwnedFd,
        restored: Vec<RestoredVolume>,
        exact: bool,
    ) -> Result<(Arc<Self>, usize, std::time::Instant), PublishError> {
        let cache = Arc::new(SecretCache::new());
        let fs = Arc::new(Fs::new(Arc::clone(&cache)));
        let state_err = |source| PublishError::State {
            path: config.state_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.state_dir).map_err(state_err)?;
        let started = std::time::Instant::now();
        let mut lost = clean_stale_hubs(&config.state_dir, Some(&checkpoint.hub_dir));
        debug!(
            ms = started.elapsed().as_secs_f64() * 1e3,
            "takeover: stale hubs cleaned"
        );

        // 1. The cache, before the first request is served.
        struct Ready {
            record: VolumeRecord,
            spec: VolumeSpec,
            cached: Arc<crate::cache::CachedVolume>,
            changes: crate::cache::ChangeSet,
            generations: Vec<(u16, u32)>,
            error: Option<String>,
            refresh_at: Option<SystemTime>,
        }
        let mut ready = Vec::new();
        // Specs and layouts first; then every volume goes into the cache at once.
        let mut staged = Vec::with_capacity(restored.len());
        let mut requests = Vec::with_capacity(restored.len());
        for r in restored {
            let RestoredVolume {
                record,
                spec,
                prior,
                fetched,
                pending,
            } = r;
            let generations: Vec<(u16, u32)> =
                prior.iter().map(|p| (p.node, p.generation)).collect();
            let restorable = spec.and_then(|s| match Layout::new(&s.id, &s.spc.objects) {
                Ok(l) => Ok((s, l)),
                Err(e) => Err(e.to_string()),
            });
            let (spec, layout) = match restorable {
                Ok(restorable) => restorable,
                Err(e) => {
                    detach_unrestorable(&record, &e, &mut lost);
                    continue;
                }
            };
            requests.push(crate::cache::Restore {
                id: record.name.clone(),
                slot: record.slot,
                layout,
                ownership: spec.ownership,
                created_at: record.created_at,
                prior,
            });
            staged.push((record, spec, generations, fetched, pending));
        }
        let caches = cache.restore_all(requests);
        for ((record, spec, generations, fetched, pending), cached) in
            staged.into_iter().zip(caches)
        {
            let cached = match cached {
                Ok(c) => c,
                Err(e) => {
                    detach_unrestorable(&record, &e.to_string(), &mut lost);
                    continue;
                }
            };
            fs.inherit(record.slot, &generations);
            let (changes, error, refresh_at) = match fetched {
                Some(Ok(objects)) => {
                    let refresh_at = earliest_refresh(&objects);
                    match cached.replace(objects) {
                        Ok(c) => (c, None, refresh_at),
                        Err(e) => (Default::default(), Some(e.to_string()), None),
                    }
                }
                Some(Err(e)) => (Default::default(), Some(e.to_string()), None),
                None => (
                    Default::default(),
                    Some(pending.unwrap_or_else(|| "not fetched".to_owned())),
                    None,
                ),
            };
            fs.adopt_values(record.slot, &generations);
            ready.push(Ready {
                record,
                spec,
                cached,
                changes,
                generations,
                error,
                refresh_at,
            });
        }

        debug!(
            ms = started.elapsed().as_secs_f64() * 1e3,
            volumes = ready.len(),
            "takeover: cache restored"
        );
        // 2. Serve the connection.
        let hub = Hub::adopt(
            &checkpoint.hub_dir,
            Arc::clone(&fs),
            fd,
            checkpoint.conn,
            config.fuse_threads,
        )?;
        let serving_since = std::time::Instant::now();
        let this = Self::assemble(
            config,
            provider,
            observer,
            fs,
            hub,
            checkpoint.hub_dir.clone(),
            lost,
        );

        // 3. Retire what changed while nobody served, then resume.
        let mut invalidations = Vec::new();
        for r in &ready {
            invalidations.extend(this.fs.invalidations(&r.changes));
            // A final checkpoint of a handoff is exact (the owner stopped its pollers first):
            // no generation beyond it was handed out.
            if !exact {
                invalidations.extend(this.fs.restart_invalidations(r.record.slot, &r.generations));
            }
        }
        if let Ok(inv) = this.with_hub(|h| h.invalidator()) {
            inv.invalidate(invalidations).await;
        }
        let mut with_values = 0;
        for r in ready {
            let volume = Arc::new(PolledVolume::new(r.spec, r.cached, r.record.target.clone()));
            match &r.error {
                None => {
                    with_values += 1;
                    volume.set_refresh_at(r.refresh_at);
                }
                Some(e) => {
                    warn!(
                        volume = %r.record.volume_id,
                        target = %r.record.target.display(),
                        error = %e,
                        "restored a volume without values; retrying at the next poll"
                    );
                    volume.mark_failed(e);
                    volume.set_refresh_at(Some(SystemTime::now()));
                }
            }
            if r.error.is_none() && r.changes.is_empty() {
                this.observer
                    .observe(&volume.view(), VolumeEvent::Restored)
                    .await;
            } else if !r.changes.is_empty() {
                let changed: Vec<_> = r.changes.changed.iter().map(|c| c.path.clone()).collect();
                this.observer
                    .observe(
                        &volume.view(),
                        VolumeEvent::Rotated {
                            changed: &changed,
                            elapsed: Duration::ZERO,
                        },
                    )
                    .await;
            }
            this.track(volume, r.record.created_target, r.record.published_at);
        }
        Ok((this, with_values, serving_since))
    }

    /// Registers a mounted volume and starts its poller.
    fn track(&self, volume: Arc<PolledVolume>, created_target: bool, published_at: SystemTime) {
        let (stop, stop_rx) = watch::channel(false);
        let task = self.poller.as_ref().map(|p| {
            let (p, v) = (Arc::clone(p), Arc::clone(&volume));
            tokio::spawn(async move { p.run(v, stop_rx).await })
        });
        let target = volume.target.clone();
        let mounted = Arc::new(Mounted {
            target: target.clone(),
            volume,
            created_target,
            published_at,
            stop,
            task: Mutex::new(task),
        });
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target, mounted);
    }

    /// Hands every change to `checkpointer` from now on (a holder keeps the hub), with what the
    /// provider hands over: its version key, which a successor needs to recognize unchanged
    /// files, its login tokens, which spare the successor a login per volume, and its dynamic
    /// secrets, which spare every pod a new credential (a change to them asks for a checkpoint).
    pub fn set_checkpointer(
        self: &Arc<Self>,
        checkpointer: Arc<Checkpointer>,
        handover: Option<Arc<dyn Handover>>,
    ) -> tokio::task::JoinHandle<()> {
        if let Some(h) = &handover {
            let weak = Arc::downgrade(&checkpointer);
            h.on_change(Box::new(move || {
                if let Some(c) = weak.upgrade() {
                    c.mark_lazy();
                }
            }));
        }
        *self.handover.lock().unwrap_or_else(|e| e.into_inner()) = handover;
        let _ = self.checkpointer.set(Arc::clone(&checkpointer));
        let me: Arc<dyn CheckpointSource> = Arc::clone(self) as Arc<dyn CheckpointSource>;
        checkpointer.start(Arc::downgrade(&me))
    }

    /// Stops everything that changes state, for a handoff: later publishes and unpublishes are
    /// refused, in-flight ones finish first, pollers stop. Files keep being served.
    pub async fn quiesce(&self) {
        let mut gate = self.gate.write().await;
        *gate = true;
        let volumes: Vec<Arc<Mounted>> = self
            .volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for m in volumes {
            let _ = m.stop.send(true);
            let task = m.task.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
    }

    /// The holder socket this publisher checkpoints to, if any.
    pub fn holder_socket(&self) -> Option<PathBuf> {
        self.checkpointer.get().map(|c| c.socket().to_owned())
    }

    /// How this process started (for `baofs status`).
    pub fn origin(&self) -> String {
        self.origin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records how this process started (for `baofs status`).
    pub fn set_origin(&self, origin: String) {
        *self.origin.lock().unwrap_or_else(|e| e.into_inner()) = origin;
    }

    /// Targets of volumes a dead process served that were detached at start (their pods lost
    /// the volume and need a restart), once.
    pub fn take_lost_targets(&self) -> Vec<PathBuf> {
        std::mem::take(&mut *self.lost.lock().unwrap_or_else(|e| e.into_inner()))
    }

    async fn commit_checkpoint(&self) {
        if let Some(c) = self.checkpointer.get() {
            c.commit().await;
        }
    }

    /// The hub's mount point.
    pub fn hub_dir(&self) -> &Path {
        &self.hub_dir
    }

    /// Requests that reached userspace (diagnostics, benchmarks).
    pub fn request_counts(&self) -> Option<[u64; 6]> {
        self.with_hub(|h| h.request_counts().snapshot()).ok()
    }

    fn with_hub<T>(&self, f: impl FnOnce(&Hub) -> T) -> Result<T, PublishError> {
        let hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
        match hub.as_ref() {
            Some(h) => Ok(f(h)),
            None => Err(PublishError::State {
                path: self.hub_dir.clone(),
                source: std::io::Error::other("the driver is shutting down"),
            }),
        }
    }

    fn target_lock(&self, target: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.target_locks.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(locks.entry(target.to_owned()).or_default())
    }

    fn release_target_lock(&self, target: &Path, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.target_locks.lock().unwrap_or_else(|e| e.into_inner());
        // Two references: the map's and ours. Anyone else waiting holds a third.
        if Arc::strong_count(&lock) <= 2 {
            locks.remove(target);
        }
    }

    fn mounted(&self, target: &Path) -> Option<Arc<Mounted>> {
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
            .cloned()
    }

    /// Publishes `spec` at `target`. A republish of the same volume at the same target only
    /// stores the new spec (fresh credentials) and cannot fail.
    pub async fn publish(
        &self,
        spec: VolumeSpec,
        target: &Path,
    ) -> Result<Published, PublishError> {
        let gate = self.gate.read().await;
        if *gate {
            return Err(handing_over(target));
        }
        let lock = self.target_lock(target);
        let result = {
            let _serialized = lock.lock().await;
            self.publish_locked(spec, target).await
        };
        self.release_target_lock(target, lock);
        match &result {
            Ok(Published::Mounted) => self.commit_checkpoint().await,
            Ok(Published::Republished) => {
                if let Some(c) = self.checkpointer.get() {
                    c.mark_lazy();
                }
            }
            Err(_) => {}
        }
        drop(gate);
        result
    }

    async fn publish_locked(
        &self,
        spec: VolumeSpec,
        target: &Path,
    ) -> Result<Published, PublishError> {
        if let Some(m) = self.mounted(target) {
            let current = m.volume.spec.load();
            if current.id != spec.id {
                return Err(PublishError::Conflict {
                    target: target.to_owned(),
                    volume: current.id.clone(),
                });
            }
            let next = if current.spc.objects == spec.spc.objects {
                spec
            } else {
                // The files of a mounted volume are fixed at publish; a changed object list
                // takes effect when the pod is recreated. Keep serving, with the fresh token.
                warn!(
                    volume = %spec.id,
                    spc = %spec.spc_ref(),
                    "SecretProviderClass objects changed since publish; keeping the published files (recreate the pod to apply)"
                );
                VolumeSpec {
                    credentials: spec.credentials,
                    ..(**current).clone()
                }
            };
            drop(current);
            m.volume.spec.store(Arc::new(next));
            return Ok(Published::Republished);
        }
        let name = hub_name(&spec);
        if !crate::cache::valid_volume_id(&name) {
            return Err(CacheError::InvalidVolumeId(spec.id.clone()).into());
        }
        let invalid = |reason: String| PublishError::InvalidTarget {
            target: target.to_owned(),
            reason,
        };
        let mut created_target = false;
        if !target.exists() {
            if !self.config.create_missing_targets {
                return Err(invalid("does not exist".into()));
            }
            std::fs::create_dir_all(target).map_err(|e| invalid(e.to_string()))?;
            created_target = true;
        }
        let undo_create = |created: bool| {
            if created {
                let _ = std::fs::remove_dir(target);
            }
        };
        let checked = (|| {
            let canonical = std::fs::canonicalize(target).map_err(|e| invalid(e.to_string()))?;
            if !canonical.is_dir() {
                return Err(invalid("not a directory".into()));
            }
            match fuse::mount::is_mount_point(&canonical) {
                Ok(true) => Err(invalid("already a mount point".into())),
                Ok(false) => Ok(()),
                Err(e) => Err(invalid(format!("reading /proc/self/mountinfo: {e}"))),
            }
        })();
        if let Err(e) = checked {
            undo_create(created_target);
            return Err(e);
        }

        // Every object fetched before anything is mounted.
        let fetched = match self.provider.fetch(&spec).await {
            Ok(f) => f,
            Err(e) => {
                self.release_unpublished(&spec).await;
                undo_create(created_target);
                return Err(e.into());
            }
        };
        let refresh_at = earliest_refresh(&fetched);
        let layout = Layout::new(&spec.id, &spec.spc.objects);
        let cached = match layout.and_then(|l| self.cache.insert(&name, l, spec.ownership, fetched))
        {
            Ok(c) => c,
            Err(e) => {
                self.release_unpublished(&spec).await;
                undo_create(created_target);
                return Err(e.into());
            }
        };
        if let Err(e) = self
            .with_hub(|h| h.bind(&name, target))
            .and_then(|r| r.map_err(PublishError::from))
        {
            self.cache.remove(&name);
            self.release_unpublished(&spec).await;
            undo_create(created_target);
            return Err(e);
        }
        info!(
            volume = %spec.id,
            target = %target.display(),
            spc = %spec.spc_ref(),
            objects = spec.spc.objects.len(),
            "published"
        );

        let volume = Arc::new(PolledVolume::new(spec, cached, target.to_owned()));
        volume.set_refresh_at(refresh_at);
        self.observer
            .observe(&volume.view(), VolumeEvent::Published)
            .await;
        self.track(volume, created_target, SystemTime::now());
        Ok(Published::Mounted)
    }

    /// Unpublishes whatever baofs mounted at `target`: stops its polling, unmounts (lazily if
    /// files are open) and drops its values, which are wiped once the kernel forgets them.
    /// Unknown targets are fine.
    pub async fn unpublish(&self, target: &Path) -> Result<Unpublished, PublishError> {
        let gate = self.gate.read().await;
        if *gate {
            return Err(handing_over(target));
        }
        let lock = self.target_lock(target);
        let result = {
            let _serialized = lock.lock().await;
            self.unpublish_locked(target).await
        };
        self.release_target_lock(target, lock);
        if matches!(result, Ok(Unpublished::Unmounted)) {
            self.commit_checkpoint().await;
        }
        drop(gate);
        result
    }

    async fn unpublish_locked(&self, target: &Path) -> Result<Unpublished, PublishError> {
        let Some(m) = self.mounted(target) else {
            return self.unpublish_foreign(target);
        };
        let how = self
            .with_hub(|h| h.unbind(target))
            .and_then(|r| r.map_err(PublishError::from))?;
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(target);
        self.retire(&m).await;
        info!(target = %target.display(), ?how, "unpublished");
        Ok(Unpublished::Unmounted)
    }

    /// A target this process did not publish: a volume of a dead baofs process, or a tmpfs of
    /// the Secrets Store CSI Driver this node ran before. Unpublish means "nothing mounted
    /// here afterwards", as upstream does it, so whatever is mounted is unmounted (lazily if
    /// busy); otherwise kubelet could never finish tearing the pod down.
    fn unpublish_foreign(&self, target: &Path) -> Result<Unpublished, PublishError> {
        let canonical = match std::fs::canonicalize(target) {
            Ok(c) => c,
            // A dead FUSE mount answers ENOTCONN even to canonicalize: it is mounted.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => target.to_owned(),
            Err(_) => return Ok(Unpublished::NotMounted),
        };
        let mounted =
            fuse::mount::is_mount_point(&canonical).map_err(|e| PublishError::InvalidTarget {
                target: target.to_owned(),
                reason: format!("reading /proc/self/mountinfo: {e}"),
            })?;
        if !mounted {
            return Ok(Unpublished::NotMounted);
        }
        let how = fuse::mount::unmount(&canonical).map_err(|source| {
            PublishError::Fuse(FuseError::Unmount {
                target: target.to_owned(),
                source,
            })
        })?;
        warn!(target = %target.display(), ?how, "unmounted a mount this process did not make");
        Ok(Unpublished::Unmounted)
    }

    async fn retire(&self, m: &Mounted) {
        let _ = m.stop.send(true);
        let task = m.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.observer
            .observe(&m.volume.view(), VolumeEvent::Unpublished)
            .await;
        self.cache.remove(&m.volume.cached.id);
        self.fs.release_inherited(m.volume.cached.slot);
        if m.created_target {
            let _ = std::fs::remove_dir(&m.target);
        }
        // After the poller stopped, so nothing renews or re-issues behind the revocation.
        self.provider.release(&m.volume.spec.load_full()).await;
    }

    /// After a failed publish: releases what the fetch may have issued (dynamic secrets'
    /// leases), unless a published volume has the same id (its leases are its own).
    async fn release_unpublished(&self, spec: &VolumeSpec) {
        let live = self
            .volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|m| m.volume.spec.load().id == spec.id);
        if !live {
            self.provider.release(spec).await;
        }
    }

    /// Status of every published volume, sorted by target (no values).
    pub fn status(&self) -> Vec<VolumeStatus> {
        let volumes: Vec<Arc<Mounted>> = self
            .volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out: Vec<VolumeStatus> = volumes
            .iter()
            .map(|m| {
                let spec = m.volume.spec.load();
                let snap = m.volume.cached.snapshot();
                let objects = spec
                    .spc
                    .objects
                    .iter()
                    .enumerate()
                    .filter_map(|(i, o)| {
                        let node = m.volume.cached.layout.object_node(i)?;
                        let v = snap.version(node)?;
                        Some(ObjectStatus {
                            name: o.path.to_string(),
                            generation: v.generation,
                            version: v.id.clone(),
                            size: v.value.len(),
                            fetched_at: v.fetched_at,
                        })
                    })
                    .collect();
                VolumeStatus {
                    volume_id: spec.id.clone(),
                    target: m.target.clone(),
                    spc: spec.spc_ref(),
                    pod: spec.pod.clone(),
                    published_at: m.published_at,
                    health: m.volume.health(),
                    objects,
                }
            })
            .collect();
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }

    /// Polls one volume now (tests, benchmarks, operators). Returns the names that changed.
    pub async fn poll_now(&self, target: &Path) -> Option<Result<Vec<String>, String>> {
        let m = self.mounted(target)?;
        let poller = self.poller.as_ref()?;
        let spec = m.volume.spec.load_full();
        Some(
            poller
                .poll_once(&spec, &m.volume.cached)
                .await
                .map(|c| c.changed.iter().map(|c| c.path.to_string()).collect())
                .map_err(|e| e.to_string()),
        )
    }

    /// Unpublishes every volume, unmounts the hub and wipes every value.
    pub async fn shutdown(&self) {
        let targets: Vec<PathBuf> = self
            .volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for target in targets {
            if let Err(e) = self.unpublish(&target).await {
                warn!(target = %target.display(), error = %e, "unpublish at shutdown failed");
            }
        }
        self.cache.clear();
        self.fs.clear();
        let hub = self.hub.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(hub) = hub {
            match hub.shutdown(Duration::from_secs(2)) {
                Ok(how) => info!(hub = %self.hub_dir.display(), ?how, "hub unmounted"),
                Err(e) => warn!(error = %e, "unmounting the hub failed"),
            }
            let _ = std::fs::remove_dir(&self.hub_dir);
        }
    }
}

fn handing_over(target: &Path) -> PublishError {
    PublishError::State {
        path: target.to_owned(),
        source: std::io::Error::other(
            "this driver is handing over to its successor; retry (the successor serves it)",
        ),
    }
}

impl CheckpointSource for Publisher {
    fn checkpoint(&self) -> Option<(Checkpoint, Secrets)> {
        let (dir, conn) = self
            .with_hub(|h| (h.dir().to_owned(), h.conn_state()))
            .ok()?;
        let volumes: Vec<Arc<Mounted>> = self
            .volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut manifests: Vec<String> = Vec::new();
        let mut index: HashMap<Arc<str>, usize> = HashMap::new();
        let mut records = Vec::with_capacity(volumes.len());
        let mut credentials = Vec::with_capacity(volumes.len());
        for m in &volumes {
            let spec = m.volume.spec.load_full();
            let cached = &m.volume.cached;
            let manifest = *index
                .entry(Arc::clone(&spec.spc.manifest))
                .or_insert_with(|| {
                    manifests.push(spec.spc.manifest.to_string());
                    manifests.len() - 1
                });
            let snap = cached.snapshot();
            let files = (0..cached.layout.len())
                .filter_map(|i| {
                    let node = u16::try_from(i).ok()?;
                    match snap.version(node) {
                        Some(v) => Some(FileRecord {
                            node,
                            generation: v.generation,
                            version: v.id.clone(),
                            fetched_at: v.fetched_at,
                        }),
                        // Restored without values yet: keep what the predecessor served.
                        None => cached.prior_version(node).map(|p| FileRecord {
                            node,
                            generation: p.generation,
                            version: p.id,
                            fetched_at: p.fetched_at,
                        }),
                    }
                })
                .collect();
            let kind = match &spec.credentials {
                Credentials::Jwt(_) => CredentialKind::Jwt,
                Credentials::Token(_) => CredentialKind::Token,
            };
            credentials.push((cached.id.clone(), spec.credentials.clone()));
            records.push(VolumeRecord {
                name: cached.id.clone(),
                slot: cached.slot,
                volume_id: spec.id.clone(),
                target: m.target.clone(),
                created_target: m.created_target,
                created_at: cached.created_at,
                published_at: m.published_at,
                manifest,
                spc_namespace: spec.spc.namespace.clone(),
                pod: PodRecord {
                    name: spec.pod.name.clone(),
                    namespace: spec.pod.namespace.clone(),
                    uid: spec.pod.uid.clone(),
                    service_account: spec.pod.service_account.clone(),
                },
                uid: spec.ownership.uid,
                gid: spec.ownership.gid,
                credential: kind,
                files,
            });
        }
        records.sort_by_key(|r| r.slot);
        let handover = self
            .handover
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (version_key, logins, leases) = match handover {
            Some(h) => (Some(h.version_key()), Some(h.logins()), Some(h.leases())),
            None => (None, None, None),
        };
        Some((
            Checkpoint {
                format: crate::takeover::FORMAT,
                writer: env!("CARGO_PKG_VERSION").to_owned(),
                hub_dir: dir,
                conn,
                handoff_socket: crate::takeover::handoff_socket(&self.config.state_dir),
                manifests,
                volumes: records,
            },
            Secrets {
                version_key,
                credentials,
                logins,
                leases,
            },
        ))
    }

    fn hub_fd(&self) -> Option<OwnedFd> {
        self.with_hub(|h| h.fd().try_clone_to_owned())
            .ok()?
            .map_err(|e| warn!(error = %e, "cannot dup the hub fd for the holder"))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;
    use crate::spc::SecretProviderClass;
    use crate::volume::{Credentials, Ownership, PodInfo};

    fn spec(ns: Option<&str>, name: &str, id: &str) -> VolumeSpec {
        let ns_line = ns
            .map(|n| format!("\n  namespace: {n}"))
            .unwrap_or_default();
        let yaml = format!(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: {name}{ns_line}\nspec:\n  provider: openbao\n  parameters:\n    roleName: r\n    objects: |\n      - objectName: a\n        secretPath: secret/data/a\n"
        );
        VolumeSpec {
            id: id.into(),
            spc: SecretProviderClass::from_yaml(&yaml).expect("spc"),
            pod: PodInfo::default(),
            credentials: Credentials::Token(SecretString::new("t".into())),
            ownership: Ownership::default(),
        }
    }

    #[test]
    fn hub_name_names_namespace_spc_and_volume() {
        assert_eq!(
            hub_name(&spec(Some("harbor"), "harbor-secrets", "csi-abc")),
            "harbor_harbor-secrets_csi-abc"
        );
        assert_eq!(hub_name(&spec(None, "x", "volume")), "-_x_volume");
        let long = "s".repeat(253);
        let id = format!("csi-{}", "f".repeat(64));
        let name = hub_name(&spec(Some("ns"), &long, &id));
        assert_eq!(name.len(), 255);
        assert!(name.starts_with("ns_sss") && name.ends_with(&id));
        assert!(crate::cache::valid_volume_id(&name));
    }
}
