//! The last stage of the data flow: what happens after a volume's values changed.
//!
//! ```text
//! poller ─> provider ─> cache swap ─> kernel invalidation ─> observer (Secret sync, pod status, events, metrics)
//! ```
//!
//! The publisher reports publishes and unpublishes, the poller reports rotations and failed
//! polls. An observer runs after the new values are already served: a slow or failing observer
//! (an API server that is down) never delays or breaks a read, it only delays that volume's next
//! poll. Observers get the values (for Secret sync) as `SecretBytes`, whose `Debug` is redacted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::provider::BoxFuture;
use crate::secret::SecretBytes;
use crate::spc::ObjectPath;
use crate::volume::{PodInfo, VolumeSpec};

/// One object of a volume as it is served now.
#[derive(Debug, Clone)]
pub struct ObjectValue {
    /// `objectName`.
    pub path: ObjectPath,
    /// Content generation (1 at publish, +1 per change).
    pub generation: u32,
    /// The provider's opaque version (reveals no value).
    pub version: String,
    /// The value.
    pub value: SecretBytes,
}

/// A volume as it is served now.
#[derive(Debug, Clone)]
pub struct VolumeView {
    /// The spec (SPC, pod, credentials).
    pub spec: Arc<VolumeSpec>,
    /// Where it is mounted.
    pub target: PathBuf,
    /// Every object, in the SPC's order.
    pub objects: Vec<ObjectValue>,
}

/// What happened to a volume.
#[derive(Debug, Clone, Copy)]
pub enum VolumeEvent<'a> {
    /// First publish succeeded: the volume is mounted and readable.
    Published,
    /// A poll changed these objects; new opens already see them.
    Rotated {
        /// The objects with a new version.
        changed: &'a [ObjectPath],
        /// How long the poll took (fetch, swap, invalidation).
        elapsed: Duration,
    },
    /// A poll found nothing new.
    Unchanged {
        /// How long the poll took.
        elapsed: Duration,
    },
    /// A poll failed; the last-known values are still served.
    RotationFailed {
        /// The error (never contains a value).
        error: &'a str,
        /// How long the poll took.
        elapsed: Duration,
    },
    /// The volume was unpublished.
    Unpublished,
    /// Taken over from a previous driver process with every value unchanged: nothing was
    /// written for it by this process, and nothing needs to be; observers adopt what the
    /// predecessor wrote (a volume that changed meanwhile is reported as `Rotated` instead).
    Restored,
}

/// Reacts to volume events (Kubernetes Secret sync, SecretProviderClassPodStatus, pod events,
/// metrics). Implementations log their own failures; nothing here can fail a publish or a poll.
pub trait VolumeObserver: Send + Sync {
    /// Called after `event` happened to `view`'s volume.
    fn observe<'a>(&'a self, view: &'a VolumeView, event: VolumeEvent<'a>) -> BoxFuture<'a, ()>;
}

/// An observer that does nothing (`baofs mount`, CSI without Kubernetes).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl VolumeObserver for NoObserver {
    fn observe<'a>(&'a self, _: &'a VolumeView, _: VolumeEvent<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Why a CSI call failed, for metrics (`error_type`) and pod events (`message`).
#[derive(Debug, Clone, Copy)]
pub struct CallError<'a> {
    /// A stable reason (upstream's `error_type` values where one fits).
    pub error_type: &'static str,
    /// The message kubelet got (never contains a value or token).
    pub message: &'a str,
}

/// What a NodePublishVolume call ended with.
#[derive(Debug, Clone, Copy)]
pub struct PublishReport<'a> {
    /// The pod, as far as the volume context named it.
    pub pod: &'a PodInfo,
    /// The SPC's `spec.provider`, once the SPC was read.
    pub provider: Option<&'a str>,
    /// `None` on success.
    pub error: Option<CallError<'a>>,
}

/// Hears about CSI node calls (metrics, a FailedToMount event on the pod). Implementations log
/// their own failures; nothing here can change the call's answer.
pub trait CallObserver: Send + Sync {
    /// A NodePublishVolume call ended.
    fn publish_done<'a>(&'a self, report: PublishReport<'a>) -> BoxFuture<'a, ()>;
    /// A NodeUnpublishVolume call ended (`ok`: it succeeded).
    fn unpublish_done(&self, ok: bool);
}

impl CallObserver for NoObserver {
    fn publish_done<'a>(&'a self, _: PublishReport<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn unpublish_done(&self, _: bool) {}
}
