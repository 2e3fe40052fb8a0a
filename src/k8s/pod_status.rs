//! SecretProviderClassPodStatus: one per mounted pod and SPC, named `<pod>-<namespace>-<spc>`,
//! labelled with the node, owned by the Pod (garbage-collected with it), written by
//! server-side apply on publish and whenever an object's version changes, never on a
//! republish or a poll that changed nothing (upstream #2058 writes on every republish).
//!
//! Versions are the provider's opaque object versions (see `provider::openbao::version`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tracing::debug;

use super::crd::{ObjectVersion, PodStatus, SecretProviderClassPodStatus};
use super::{FIELD_MANAGER, K8sError, NODE_LABEL, object_name};
use crate::metrics::Metrics;
use crate::observer::VolumeView;

/// `[{id, version}]` sorted by id. The versions are the provider's: a keyed hash of the
/// object's config and content (key random per process, never leaves memory), so they change
/// exactly when the content does and reveal nothing about it.
pub fn versions(view: &VolumeView) -> Vec<ObjectVersion> {
    let mut out: Vec<ObjectVersion> = view
        .objects
        .iter()
        .map(|o| ObjectVersion {
            id: o.path.as_str().to_owned(),
            version: o.version.clone(),
        })
        .collect();
    out.sort();
    out
}

/// `<pod>-<namespace>-<spc>` (upstream's name).
pub fn status_name(pod: &str, namespace: &str, spc: &str) -> String {
    format!("{pod}-{namespace}-{spc}")
}

/// Writes SecretProviderClassPodStatus objects, only when they change.
pub struct PodStatusWriter {
    client: kube::Client,
    node_id: String,
    metrics: Arc<Metrics>,
    /// `(namespace, name)` -> the status last written by this process.
    written: Mutex<HashMap<(String, String), PodStatus>>,
}

impl std::fmt::Debug for PodStatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodStatusWriter")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusWrite {
    /// Applied.
    Written,
    /// Same as last written: nothing sent.
    Unchanged,
    /// The volume context named no pod: nothing to write.
    NoPod,
}

impl PodStatusWriter {
    /// A writer labelling objects with `node_id`.
    pub fn new(client: kube::Client, node_id: String, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            node_id,
            metrics,
            written: Mutex::new(HashMap::new()),
        }
    }

    fn key(view: &VolumeView) -> Option<(String, String, String)> {
        let pod = view.spec.pod.name.as_deref()?;
        let ns = view.spec.pod.namespace.as_deref()?;
        Some((
            ns.to_owned(),
            status_name(pod, ns, &view.spec.spc.name),
            pod.to_owned(),
        ))
    }

    /// Writes the status of `view` with `objects` if it differs from what was last written.
    pub async fn record(
        &self,
        view: &VolumeView,
        objects: Vec<ObjectVersion>,
    ) -> Result<StatusWrite, K8sError> {
        let Some((namespace, name, pod)) = Self::key(view) else {
            return Ok(StatusWrite::NoPod);
        };
        let status = PodStatus {
            pod_name: pod.clone(),
            secret_provider_class_name: view.spec.spc.name.clone(),
            mounted: true,
            target_path: view.target.to_string_lossy().into_owned(),
            objects,
        };
        let key = (namespace.clone(), name.clone());
        if self
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            == Some(&status)
        {
            return Ok(StatusWrite::Unchanged);
        }
        let mut metadata = json!({
            "name": name,
            "namespace": namespace,
            "labels": { NODE_LABEL: self.node_id },
        });
        if let Some(uid) = &view.spec.pod.uid {
            metadata["ownerReferences"] = json!([{
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod,
                "uid": uid,
            }]);
        }
        let body = json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClassPodStatus",
            "metadata": metadata,
            "status": status,
        });
        let api: Api<SecretProviderClassPodStatus> =
            Api::namespaced(self.client.clone(), &namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {
                self.metrics.k8s_write("pod_status", "ok");
                debug!(namespace, name, "SecretProviderClassPodStatus written");
                self.written
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, status);
                Ok(StatusWrite::Written)
            }
            Err(e) => {
                self.metrics.k8s_write("pod_status", "error");
                Err(K8sError::api(
                    "apply",
                    object_name("SecretProviderClassPodStatus", &namespace, &name),
                    e,
                ))
            }
        }
    }

    /// Records `objects` as written for `view` without writing (a predecessor process wrote
    /// them: same versions, same key).
    pub fn assume(&self, view: &VolumeView, objects: Vec<ObjectVersion>) {
        let Some((namespace, name, pod)) = Self::key(view) else {
            return;
        };
        let status = PodStatus {
            pod_name: pod,
            secret_provider_class_name: view.spec.spc.name.clone(),
            mounted: true,
            target_path: view.target.to_string_lossy().into_owned(),
            objects,
        };
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace, name), status);
    }

    /// Forgets what was written for `view` (unpublished). The object stays: it is owned by
    /// the Pod and deleted with it by the garbage collector, as upstream's.
    pub fn forget(&self, view: &VolumeView) {
        if let Some((namespace, name, _)) = Self::key(view) {
            self.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(namespace, name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::ObjectValue;
    use crate::secret::{SecretBytes, SecretString};
    use crate::spc::{ObjectPath, SecretProviderClass};
    use crate::volume::{Credentials, Ownership, PodInfo, VolumeSpec};

    fn view(values: &[(&str, &str)]) -> VolumeView {
        let spc = SecretProviderClass::from_yaml(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: s\nspec:\n  provider: openbao\n  parameters:\n    roleName: r\n    objects: |\n      - objectName: b\n        secretPath: secret/data/b\n      - objectName: a\n        secretPath: secret/data/a\n",
        );
        let Ok(spc) = spc else {
            panic!("spc");
        };
        VolumeView {
            spec: Arc::new(VolumeSpec {
                id: "v".into(),
                spc,
                pod: PodInfo::default(),
                credentials: Credentials::Token(SecretString::new("t".into())),
                ownership: Ownership::default(),
            }),
            target: "/t".into(),
            objects: values
                .iter()
                .map(|(p, v)| ObjectValue {
                    path: ObjectPath::parse(p).unwrap_or_else(|_| panic!("path")),
                    generation: 1,
                    version: format!("ver-{v}"),
                    value: SecretBytes::copy_from(v.as_bytes()),
                })
                .collect(),
        }
    }

    #[test]
    fn versions_are_the_providers_sorted_by_id() {
        let a = versions(&view(&[("b", "1"), ("a", "2")]));
        assert_eq!(a[0].id, "a");
        assert_eq!(a[0].version, "ver-2");
        assert_eq!(a[1].id, "b");
        assert_eq!(a[1].version, "ver-1");
    }

    #[test]
    fn upstream_name() {
        assert_eq!(status_name("web-0", "apps", "db"), "web-0-apps-db");
    }
}
