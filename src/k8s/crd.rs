//! The two custom resources, typed as `deploy/crds/*.yaml` declares them (upstream's group,
//! version, kind and field names). No schema generation: the CRDs are hand-written manifests
//! and the tests apply them to a real API server and read these types back.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, NamespaceResourceScope, Resource};
use serde::{Deserialize, Serialize};

/// The API group of both resources.
pub const GROUP: &str = "secrets-store.csi.x-k8s.io";

/// `secrets-store.csi.x-k8s.io/v1` `SecretProviderClass`, as stored in the API. Serializes with
/// its `apiVersion` and `kind` (as k8s-openapi's types do).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SecretProviderClass {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// `spec`.
    #[serde(default)]
    pub spec: SecretProviderClassSpec,
}

/// `spec` of a SecretProviderClass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderClassSpec {
    /// `provider`: `openbao` or `vault` for baofs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Provider parameters (no secret: addresses, role, object paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, String>>,
    /// Kubernetes Secrets to sync from the mounted objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_objects: Option<Vec<SecretObject>>,
}

/// One `spec.secretObjects[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObject {
    /// `secretName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// `type`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// `labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `annotations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<SecretObjectData>>,
}

/// One `spec.secretObjects[].data[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectData {
    /// `objectName`: a mounted object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_name: Option<String>,
    /// `key` in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Resource for SecretProviderClass {
    const API_VERSION: &'static str = "secrets-store.csi.x-k8s.io/v1";
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "SecretProviderClass";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "secretproviderclasses";
    type Scope = NamespaceResourceScope;
}

impl Metadata for SecretProviderClass {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl SecretProviderClass {
    /// The manifest as JSON (which `spc::SecretProviderClass::from_yaml` reads): apiVersion,
    /// kind, name, namespace and spec. Everything the validation of `src/spc.rs` applies to a
    /// file applies to an object from the API too.
    pub fn to_manifest(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": <Self as Resource>::API_VERSION,
            "kind": <Self as Resource>::KIND,
            "metadata": {
                "name": self.metadata.name,
                "namespace": self.metadata.namespace,
            },
            "spec": self.spec,
        })
    }
}

/// `secrets-store.csi.x-k8s.io/v1` `SecretProviderClassPodStatus`: what a node mounted for one
/// pod from one SPC. No `spec`. Serializes with its `apiVersion` and `kind`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SecretProviderClassPodStatus {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// `status`.
    #[serde(default)]
    pub status: PodStatus,
}

/// `status` of a SecretProviderClassPodStatus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// The pod's name.
    #[serde(default)]
    pub pod_name: String,
    /// The SPC's name.
    #[serde(default)]
    pub secret_provider_class_name: String,
    /// Whether the volume is mounted.
    #[serde(default)]
    pub mounted: bool,
    /// kubelet's target path of the volume.
    #[serde(default)]
    pub target_path: String,
    /// Objects and their versions, sorted by id.
    #[serde(default)]
    pub objects: Vec<ObjectVersion>,
}

/// One mounted object and its version.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectVersion {
    /// `objectName`.
    pub id: String,
    /// An opaque version that changes when the content changes and reveals nothing about it.
    pub version: String,
}

impl Resource for SecretProviderClassPodStatus {
    const API_VERSION: &'static str = "secrets-store.csi.x-k8s.io/v1";
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "SecretProviderClassPodStatus";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "secretproviderclasspodstatuses";
    type Scope = NamespaceResourceScope;
}

impl Metadata for SecretProviderClassPodStatus {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Serializes `apiVersion`, `kind`, `metadata` and one more field.
fn serialize_typed<S: serde::Serializer, K: Resource, T: Serialize>(
    s: S,
    metadata: &ObjectMeta,
    field: &'static str,
    value: &T,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct(K::KIND, 4)?;
    st.serialize_field("apiVersion", K::API_VERSION)?;
    st.serialize_field("kind", K::KIND)?;
    st.serialize_field("metadata", metadata)?;
    st.serialize_field(field, value)?;
    st.end()
}

impl Serialize for SecretProviderClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_typed::<S, Self, _>(s, &self.metadata, "spec", &self.spec)
    }
}

impl Serialize for SecretProviderClassPodStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_typed::<S, Self, _>(s, &self.metadata, "status", &self.status)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn api_objects_validate_like_files() {
        let obj: SecretProviderClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClass",
            "metadata": {"name": "app", "namespace": "ns", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {
                "provider": "openbao",
                "parameters": {"roleName": "r", "objects": "- objectName: a\n  secretPath: secret/data/a\n  secretKey: k\n"},
                "secretObjects": [{"secretName": "s", "type": "Opaque",
                                   "data": [{"objectName": "a", "key": "A"}]}]
            }
        }))
        .unwrap();
        let text = obj.to_manifest().to_string();
        let spc = crate::spc::SecretProviderClass::from_yaml(&text).unwrap();
        assert_eq!(spc.reference(), "ns/app");
        assert_eq!(spc.secret_objects.len(), 1);
        assert_eq!(spc.secret_objects[0].data[0].key, "A");
    }

    #[test]
    fn pod_status_uses_upstream_field_names() {
        let s = SecretProviderClassPodStatus {
            status: PodStatus {
                pod_name: "p".into(),
                secret_provider_class_name: "spc".into(),
                mounted: true,
                target_path: "/t".into(),
                objects: vec![ObjectVersion {
                    id: "a".into(),
                    version: "v".into(),
                }],
            },
            ..Default::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["apiVersion"], "secrets-store.csi.x-k8s.io/v1");
        assert_eq!(v["kind"], "SecretProviderClassPodStatus");
        assert_eq!(v["status"]["secretProviderClassName"], "spc");
        assert_eq!(v["status"]["targetPath"], "/t");
        assert_eq!(v["status"]["objects"][0]["id"], "a");
    }
}
