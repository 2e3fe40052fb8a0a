//! Events on the Pod, with upstream's reasons, through kube's recorder (events.k8s.io/v1;
//! repeats within a few minutes become a series on one Event, not new objects). RBAC: create
//! and patch `events` in `events.k8s.io`.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::{debug, warn};

use super::EVENT_CONTROLLER;
use crate::metrics::Metrics;
use crate::volume::PodInfo;

/// A mount failed (the cause is the note).
pub const FAILED_TO_MOUNT: &str = "FailedToMount";
/// A rotation changed the mounted files.
pub const MOUNT_ROTATION_COMPLETE: &str = "MountRotationComplete";
/// A rotation poll failed; the last-known files are still served.
pub const MOUNT_ROTATION_FAILED: &str = "MountRotationFailed";
/// Synced Secrets were updated after a rotation.
pub const SECRET_ROTATION_COMPLETE: &str = "SecretRotationComplete";
/// Synced Secrets could not be updated after a rotation.
pub const SECRET_ROTATION_FAILED: &str = "SecretRotationFailed";
/// A synced Secret could not be created at mount (upstream v1.6's only event).
pub const FAILED_TO_CREATE_SECRET: &str = "FailedToCreateSecret";

/// The largest note sent (events.k8s.io allows 1 kB).
const MAX_NOTE: usize = 1000;

/// Emits events on pods.
#[derive(Clone)]
pub struct EventRecorder {
    recorder: Recorder,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder").finish_non_exhaustive()
    }
}

/// The Pod's object reference, if the volume context named it.
pub fn pod_reference(pod: &PodInfo) -> Option<ObjectReference> {
    Some(ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: Some(pod.name.clone()?),
        namespace: Some(pod.namespace.clone()?),
        uid: pod.uid.clone(),
        ..Default::default()
    })
}

fn truncate(note: &str) -> String {
    if note.len() <= MAX_NOTE {
        return note.to_owned();
    }
    let mut end = MAX_NOTE;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

impl EventRecorder {
    /// A recorder reporting as `baofs` from `node`.
    pub fn new(client: kube::Client, node: &str, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: EVENT_CONTROLLER.to_owned(),
            instance: Some(node.to_owned()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            metrics,
        }
    }

    /// Emits `reason` on the pod with `note` (which must not contain a value; callers pass
    /// error messages and object names only). Failures are logged and counted, never returned.
    pub async fn emit(&self, pod: &PodInfo, warning: bool, reason: &str, action: &str, note: &str) {
        let Some(reference) = pod_reference(pod) else {
            debug!(
                reason,
                "no pod name/namespace in the volume context: event not emitted"
            );
            return;
        };
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(truncate(note)),
            action: action.to_owned(),
            secondary: None,
        };
        match self.recorder.publish(&event, &reference).await {
            Ok(()) => self.metrics.k8s_write("event", "ok"),
            Err(e) => {
                self.metrics.k8s_write("event", "error");
                warn!(
                    reason,
                    pod = reference.name.as_deref().unwrap_or(""),
                    namespace = reference.namespace.as_deref().unwrap_or(""),
                    error = %e,
                    "emitting an event failed"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_NOTE);
        let t = truncate(&long);
        assert!(t.len() <= MAX_NOTE + 3 && t.ends_with("..."));
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn pod_reference_needs_name_and_namespace() {
        assert!(pod_reference(&PodInfo::default()).is_none());
        let pod = PodInfo {
            name: Some("p".into()),
            namespace: Some("ns".into()),
            uid: Some("u".into()),
            service_account: None,
        };
        let r = pod_reference(&pod).unwrap_or_default();
        assert_eq!(r.kind.as_deref(), Some("Pod"));
        assert_eq!(r.uid.as_deref(), Some("u"));
    }
}
