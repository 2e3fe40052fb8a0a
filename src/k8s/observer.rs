//! The Kubernetes observer: what a publish, a rotation or a failed poll changes in the cluster.
//!
//! ```text
//! Published      ─> Secrets (sync) ─> SecretProviderClassPodStatus            [FailedToCreateSecret]
//! Rotated        ─> MountRotationComplete ─> Secrets [SecretRotationComplete|Failed] ─> SPCPS ─> metrics
//! Unchanged      ─> metrics (rotated=false)
//! RotationFailed ─> MountRotationFailed ─> metrics (error_type=FailedToRotate)
//! Unpublished    ─> forget (the Secret and the SPCPS stay: see `syncer` and `pod_status`)
//! NodePublish failed ─> FailedToMount (with the cause) ─> metrics
//! ```
//!
//! Failed Secret or SPCPS writes are retried in the background with backoff (2 s doubling to
//! 5 min) while the mount keeps serving; every `resync` each synced Secret is checked with one
//! metadata GET and rewritten if it was deleted or changed by someone else.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::events::{self, EventRecorder};
use super::pod_status::{PodStatusWriter, versions};
use crate::metrics::{FAILED_TO_ROTATE, Metrics};
use crate::observer::{CallObserver, PublishReport, VolumeEvent, VolumeObserver, VolumeView};
use crate::provider::BoxFuture;
use crate::spc::ObjectPath;
use crate::syncer::SecretSyncer;

/// `error_type` of a failed Secret sync after a rotation.
pub const SECRET_SYNC_FAILED: &str = "SecretSyncFailed";
/// `error_type` of a failed SecretProviderClassPodStatus write after a rotation.
pub const POD_STATUS_FAILED: &str = "PodStatusWriteFailed";

const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// A published volume as last seen, and whether its cluster state needs another try.
struct Tracked {
    view: VolumeView,
    pending: bool,
    failures: u32,
    retry_at: Instant,
}

/// Secret sync, pod status, events and rotation metrics for every volume.
pub struct KubeObserver {
    syncer: SecretSyncer,
    status: PodStatusWriter,
    events: EventRecorder,
    metrics: Arc<Metrics>,
    volumes: Mutex<HashMap<PathBuf, Tracked>>,
}

impl std::fmt::Debug for KubeObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeObserver").finish_non_exhaustive()
    }
}

fn names(paths: &[ObjectPath]) -> String {
    paths
        .iter()
        .map(ObjectPath::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

impl KubeObserver {
    /// An observer writing as node `node_id`.
    pub fn new(client: kube::Client, node_id: &str, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            syncer: SecretSyncer::new(client.clone(), Arc::clone(&metrics)),
            status: PodStatusWriter::new(client.clone(), node_id.to_owned(), Arc::clone(&metrics)),
            events: EventRecorder::new(client, node_id, Arc::clone(&metrics)),
            metrics,
            volumes: Mutex::new(HashMap::new()),
        })
    }

    /// A Warning `FailedToMount` event on each pod whose volume was lost: its driver and the
    /// holder both died, and the dead mount was detached at start. The pod must be recreated.
    pub async fn report_lost(&self, lost: &[(PathBuf, crate::volume::PodInfo)]) {
        for (target, pod) in lost {
            let note = format!(
                "the secrets volume at {} was lost: the driver and its fd holder both stopped, so \
                 its FUSE connection ended; the dead mount was detached. Recreate the pod to mount it again",
                target.display()
            );
            self.events
                .emit(pod, true, super::events::FAILED_TO_MOUNT, "Mount", &note)
                .await;
        }
    }

    /// Starts the retry and resync loop; it ends when the observer is dropped or the handle
    /// aborted.
    pub fn spawn_maintenance(self: &Arc<Self>, resync: Duration) -> JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(maintain(weak, resync))
    }

    fn track(&self, view: &VolumeView) {
        let mut volumes = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        match volumes.get_mut(&view.target) {
            Some(t) => t.view = view.clone(),
            None => {
                volumes.insert(
                    view.target.clone(),
                    Tracked {
                        view: view.clone(),
                        pending: false,
                        failures: 0,
                        retry_at: Instant::now(),
                    },
                );
            }
        }
    }

    fn set_pending(&self, view: &VolumeView, pending: bool) {
        let mut volumes = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = volumes.get_mut(&view.target) {
            if pending {
                t.failures = t.failures.saturating_add(1);
                let backoff = RETRY_FIRST
                    .saturating_mul(2u32.saturating_pow(t.failures.saturating_sub(1).min(16)))
                    .min(RETRY_MAX);
                t.retry_at = Instant::now() + backoff;
            } else {
                t.failures = 0;
            }
            t.pending = pending;
        }
    }

    /// Secrets, then the pod status. Returns the error types of what failed.
    async fn write_state(
        &self,
        view: &VolumeView,
        on_rotation: bool,
    ) -> (Option<&'static str>, u64) {
        let mut error_type = None;
        let mut written = 0;
        let pod = &view.spec.pod;
        if !view.spec.spc.secret_objects.is_empty() {
            match self.syncer.sync(view).await {
                Ok(report) => {
                    written = report.written;
                    if on_rotation && report.written > 0 {
                        let secrets: Vec<&str> = view
                            .spec
                            .spc
                            .secret_objects
                            .iter()
                            .map(|s| s.secret_name.as_str())
                            .collect();
                        self.events
                            .emit(
                                pod,
                                false,
                                events::SECRET_ROTATION_COMPLETE,
                                "Sync",
                                &format!(
                                    "successfully rotated K8s secrets [{}] of SecretProviderClass {}",
                                    secrets.join(", "),
                                    view.spec.spc_ref()
                                ),
                            )
                            .await;
                    }
                }
                Err(e) => {
                    warn!(volume = %view.spec.id, spc = %view.spec.spc_ref(), error = %e,
                          reason = e.reason(), "Secret sync failed; retrying in the background");
                    let reason = if on_rotation {
                        events::SECRET_ROTATION_FAILED
                    } else {
                        events::FAILED_TO_CREATE_SECRET
                    };
                    self.events
                        .emit(pod, true, reason, "Sync", &e.to_string())
                        .await;
                    error_type = Some(SECRET_SYNC_FAILED);
                }
            }
        }
        let versions = versions(view);
        if let Err(e) = self.status.record(view, versions).await {
            warn!(volume = %view.spec.id, error = %e, reason = e.reason(),
                  "writing the SecretProviderClassPodStatus failed; retrying in the background");
            error_type = error_type.or(Some(POD_STATUS_FAILED));
        }
        self.set_pending(view, error_type.is_some());
        (error_type, written)
    }

    async fn published(&self, view: &VolumeView) {
        self.track(view);
        self.write_state(view, false).await;
    }

    /// A volume taken over unchanged: the predecessor wrote its Secrets and pod status with
    /// the same versions (keyed with the handed-over key), so nothing is written; they are
    /// adopted (one metadata GET per Secret) so the periodic resync covers them again. A
    /// Secret that is missing or not ours is written as at publish.
    async fn restored(&self, view: &VolumeView) {
        self.track(view);
        self.status.assume(view, versions(view));
        match self.syncer.adopt(view).await {
            Ok(true) => {}
            Ok(false) => {
                self.write_state(view, false).await;
            }
            Err(e) => {
                warn!(volume = %view.spec.id, error = %e, "adopting synced Secrets failed; writing them");
                self.write_state(view, false).await;
            }
        }
    }

    async fn rotated(&self, view: &VolumeView, changed: &[ObjectPath], elapsed: Duration) {
        let started = Instant::now();
        self.track(view);
        self.events
            .emit(
                &view.spec.pod,
                false,
                events::MOUNT_ROTATION_COMPLETE,
                "Rotate",
                &format!(
                    "successfully rotated mounted contents [{}] of SecretProviderClass {}",
                    names(changed),
                    view.spec.spc_ref()
                ),
            )
            .await;
        let (error_type, _) = self.write_state(view, true).await;
        self.metrics
            .rotation(true, error_type, elapsed + started.elapsed());
    }

    async fn rotation_failed(&self, view: &VolumeView, error: &str, elapsed: Duration) {
        self.events
            .emit(
                &view.spec.pod,
                true,
                events::MOUNT_ROTATION_FAILED,
                "Rotate",
                &format!(
                    "failed to rotate mounted contents of SecretProviderClass {} (the last-known contents are still served): {error}",
                    view.spec.spc_ref()
                ),
            )
            .await;
        self.metrics
            .rotation(false, Some(FAILED_TO_ROTATE), elapsed);
    }

    fn unpublished(&self, view: &VolumeView) {
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&view.target);
        self.status.forget(view);
    }

    fn due(&self) -> Vec<VolumeView> {
        let now = Instant::now();
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|t| t.pending && t.retry_at <= now)
            .map(|t| t.view.clone())
            .collect()
    }

    fn all(&self) -> Vec<VolumeView> {
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|t| t.view.clone())
            .collect()
    }

    /// Checks every synced Secret; rewrites those deleted or changed by someone else.
    pub async fn resync(&self) {
        // One check per SPC, however many pods of this node mount it.
        let mut seen = std::collections::HashSet::new();
        for view in self.all() {
            if view.spec.spc.secret_objects.is_empty()
                || !seen.insert((view.spec.pod.namespace.clone(), view.spec.spc.name.clone()))
            {
                continue;
            }
            match self.syncer.verify(&view).await {
                Ok(0) => {}
                Ok(stale) => {
                    info!(volume = %view.spec.id, stale, "synced Secrets changed or deleted; writing them again");
                    self.write_state(&view, false).await;
                }
                Err(e) => {
                    warn!(volume = %view.spec.id, error = %e, "checking synced Secrets failed")
                }
            }
        }
    }
}

async fn maintain(weak: Weak<KubeObserver>, resync: Duration) {
    let mut last_resync = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(this) = weak.upgrade() else {
            return;
        };
        for view in this.due() {
            this.write_state(&view, false).await;
        }
        if last_resync.elapsed() >= resync {
            this.resync().await;
            last_resync = Instant::now();
        }
    }
}

impl VolumeObserver for KubeObserver {
    fn observe<'a>(&'a self, view: &'a VolumeView, event: VolumeEvent<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match event {
                VolumeEvent::Published => self.published(view).await,
                VolumeEvent::Rotated { changed, elapsed } => {
                    self.rotated(view, changed, elapsed).await;
                }
                VolumeEvent::Unchanged { elapsed } => self.metrics.rotation(false, None, elapsed),
                VolumeEvent::RotationFailed { error, elapsed } => {
                    self.rotation_failed(view, error, elapsed).await;
                }
                VolumeEvent::Unpublished => self.unpublished(view),
                VolumeEvent::Restored => self.restored(view).await,
            }
        })
    }
}

impl CallObserver for KubeObserver {
    fn publish_done<'a>(&'a self, report: PublishReport<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.metrics.publish_done(&report);
            if let Some(e) = report.error {
                self.events
                    .emit(
                        report.pod,
                        true,
                        events::FAILED_TO_MOUNT,
                        "Mount",
                        e.message,
                    )
                    .await;
            }
        })
    }

    fn unpublish_done(&self, ok: bool) {
        self.metrics.node_unpublish(ok);
    }
}
