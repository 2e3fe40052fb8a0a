//! Secret sync (Pattern B): each `spec.secretObjects[]` entry of a volume's SPC becomes a
//! Kubernetes Secret in the pod's namespace, built from the volume's current values.
//!
//! ```text
//! VolumeView ─> data (objectName -> key; kubernetes.io/tls: PEM certs / key extracted)
//!            ─> digest == last written?  yes: nothing is sent
//!            ─> first time in this process: GET metadata (refuse a Secret we do not manage)
//!            ─> server-side apply (field manager `baofs`, force): labels, annotations, type, data
//!            ─> ownerReferences += this Pod (strategic merge by uid, if not there yet)
//! ```
//!
//! **Ownership.** A synced Secret is owned by the Pods that mount a volume of its SPC: each
//! publish adds its own Pod (`v1`, `Pod`, name, uid; neither `controller` nor
//! `blockOwnerDeletion`) and nothing ever removes one. The garbage collector drops the
//! reference of a deleted Pod, and deletes the Secret when the last owning Pod is gone. So the
//! Secret lives exactly while a pod using it exists (the behaviour upstream documents): it
//! goes at scale-to-zero (upstream keeps it while the ReplicaSet lives, #1770), it is never
//! deleted while one pod remains (upstream's references to pods' owners or SPCPS objects let
//! HPA scale-down delete it, #2051), and it goes with a Helm uninstall (#292). References are
//! merged by uid, so several nodes add their pods without removing each other's; the data is
//! applied by server-side apply, so a key removed from the SPC disappears from the Secret.
//! Unpublish leaves the Secret alone: the pod's deletion (which follows) is what removes it.
//!
//! Values pass through this module only as `SecretBytes` and zeroized buffers; the one copy
//! it cannot wipe is the request body inside the HTTP client. The digest that decides whether
//! to write is a keyed HMAC (random key per process). Nothing here logs a value.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::json;
use tracing::{debug, info};
use zeroize::Zeroizing;

use crate::k8s::{FIELD_MANAGER, K8sError, MANAGED_LABEL, is_not_found, object_name};
use crate::metrics::{Metrics, provider_label};
use crate::observer::VolumeView;
use crate::spc::SecretObjectSpec;

/// The Secret type whose `tls.crt`/`tls.key` are extracted from PEM.
pub const TLS_TYPE: &str = "kubernetes.io/tls";

/// What one sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Secrets created or changed.
    pub written: u64,
    /// Owner references added.
    pub owners_added: u64,
    /// Secrets that were already as wanted.
    pub unchanged: u64,
}

/// Why a sync failed: every Secret that failed (the others were synced).
#[derive(Debug, thiserror::Error)]
#[error("{}", .failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct SyncError {
    /// One error per failed Secret.
    pub failures: Vec<K8sError>,
}

impl SyncError {
    /// The first failure's reason, for metric labels.
    pub fn reason(&self) -> &'static str {
        self.failures.first().map_or("unknown", K8sError::reason)
    }
}

#[derive(Debug, Clone)]
struct Synced {
    digest: Vec<u8>,
    owners: BTreeSet<String>,
    resource_version: Option<String>,
}

/// Writes synced Secrets, only when they change.
pub struct SecretSyncer {
    client: kube::Client,
    metrics: Arc<Metrics>,
    key: hmac::Key,
    synced: Mutex<HashMap<(String, String), Synced>>,
}

impl std::fmt::Debug for SecretSyncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSyncer").finish_non_exhaustive()
    }
}

/// The data of one Secret: key -> bytes (zeroized on drop).
type SecretData = BTreeMap<String, Zeroizing<Vec<u8>>>;

/// One PEM block (`-----BEGIN label-----` .. `-----END label-----`).
struct PemBlock<'a> {
    label: &'a str,
    text: &'a [u8],
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Every well-formed PEM block of `bytes`, in order.
fn pem_blocks(bytes: &[u8]) -> Vec<PemBlock<'_>> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const DASHES: &[u8] = b"-----";
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(start) = find(bytes, BEGIN, pos) {
        let label_start = start + BEGIN.len();
        let Some(label_end) = find(bytes, DASHES, label_start) else {
            break;
        };
        let Ok(label) = std::str::from_utf8(&bytes[label_start..label_end]) else {
            pos = label_end;
            continue;
        };
        let end_marker = format!("-----END {label}-----");
        let Some(end) = find(bytes, end_marker.as_bytes(), label_end) else {
            pos = label_end;
            continue;
        };
        let stop = end + end_marker.len();
        out.push(PemBlock {
            label,
            text: &bytes[start..stop],
        });
        pos = stop;
    }
    out
}

/// `tls.crt`: every CERTIFICATE block, concatenated (leaf first, as given).
fn tls_certificates(bytes: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::new());
    for b in pem_blocks(bytes)
        .iter()
        .filter(|b| b.label == "CERTIFICATE")
    {
        out.extend_from_slice(b.text);
        out.push(b'\n');
    }
    (!out.is_empty()).then_some(out)
}

/// `tls.key`: the first private key block (PKCS#8, PKCS#1 RSA or SEC1 EC), as given.
fn tls_private_key(bytes: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    pem_blocks(bytes)
        .iter()
        .find(|b| b.label.ends_with("PRIVATE KEY") && !b.label.contains("ENCRYPTED"))
        .map(|b| {
            let mut out = Zeroizing::new(Vec::with_capacity(b.text.len() + 1));
            out.extend_from_slice(b.text);
            out.push(b'\n');
            out
        })
}

/// The data of `so` from the volume's current values.
fn secret_data(
    so: &SecretObjectSpec,
    view: &VolumeView,
    object: &str,
) -> Result<SecretData, K8sError> {
    let mut data = SecretData::new();
    for d in &so.data {
        let value = view
            .objects
            .iter()
            .find(|o| o.path == d.object_name)
            .ok_or_else(|| K8sError::Data {
                object: object.to_owned(),
                reason: format!("object '{}' is not mounted", d.object_name),
            })?;
        let bytes = value.value.expose();
        let extracted = if so.secret_type == TLS_TYPE && d.key == "tls.crt" {
            tls_certificates(bytes).ok_or_else(|| K8sError::Data {
                object: object.to_owned(),
                reason: format!(
                    "object '{}' has no PEM CERTIFICATE block for tls.crt",
                    d.object_name
                ),
            })?
        } else if so.secret_type == TLS_TYPE && d.key == "tls.key" {
            tls_private_key(bytes).ok_or_else(|| K8sError::Data {
                object: object.to_owned(),
                reason: format!(
                    "object '{}' has no unencrypted PEM private key block for tls.key",
                    d.object_name
                ),
            })?
        } else {
            Zeroizing::new(bytes.to_vec())
        };
        data.insert(d.key.clone(), extracted);
    }
    Ok(data)
}

/// The labels written: the SPC's plus `secrets-store.csi.k8s.io/managed=true`.
fn labels_of(so: &SecretObjectSpec) -> BTreeMap<String, String> {
    let mut labels = so.labels.clone();
    labels.insert(MANAGED_LABEL.to_owned(), "true".to_owned());
    labels
}

/// The server-side apply body. Serializes the values as base64 straight from zeroized
/// buffers; `Debug` shows keys only.
struct ApplyBody<'a> {
    name: &'a str,
    namespace: &'a str,
    secret_type: &'a str,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    data: &'a SecretData,
}

impl std::fmt::Debug for ApplyBody<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyBody")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

struct Metadata<'a>(&'a ApplyBody<'a>);
struct Data<'a>(&'a SecretData);
struct B64<'a>(&'a [u8]);

impl Serialize for B64<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let encoded = Zeroizing::new(STANDARD.encode(self.0));
        s.serialize_str(&encoded)
    }
}

impl Serialize for Data<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, &B64(v))?;
        }
        map.end()
    }
}

impl Serialize for Metadata<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.0;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("name", b.name)?;
        map.serialize_entry("namespace", b.namespace)?;
        map.serialize_entry("labels", b.labels)?;
        if !b.annotations.is_empty() {
            map.serialize_entry("annotations", b.annotations)?;
        }
        map.end()
    }
}

impl Serialize for ApplyBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(5))?;
        map.serialize_entry("apiVersion", "v1")?;
        map.serialize_entry("kind", "Secret")?;
        map.serialize_entry("metadata", &Metadata(self))?;
        map.serialize_entry("type", self.secret_type)?;
        map.serialize_entry("data", &Data(self.data))?;
        map.end()
    }
}

fn owner_uids(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeSet<String> {
    meta.owner_references
        .iter()
        .flatten()
        .map(|r| r.uid.clone())
        .collect()
}

impl SecretSyncer {
    /// A syncer with a fresh digest key.
    pub fn new(client: kube::Client, metrics: Arc<Metrics>) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        let _ = SystemRandom::new().fill(&mut bytes[..]);
        Self {
            client,
            metrics,
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes[..]),
            synced: Mutex::new(HashMap::new()),
        }
    }

    fn digest(
        &self,
        so: &SecretObjectSpec,
        labels: &BTreeMap<String, String>,
        data: &SecretData,
    ) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.key);
        let mut field = |b: &[u8]| {
            ctx.update(&(b.len() as u64).to_be_bytes());
            ctx.update(b);
        };
        field(so.secret_type.as_bytes());
        for (k, v) in labels {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        field(b"--annotations--");
        for (k, v) in &so.annotations {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        field(b"--data--");
        for (k, v) in data {
            field(k.as_bytes());
            field(v);
        }
        ctx.sign().as_ref().to_vec()
    }

    /// Syncs every secretObjects entry of `view`'s SPC. Each Secret is tried; the error lists
    /// those that failed.
    pub async fn sync(&self, view: &VolumeView) -> Result<SyncReport, SyncError> {
        let started = std::time::Instant::now();
        let mut report = SyncReport::default();
        let mut failures = Vec::new();
        for so in &view.spec.spc.secret_objects {
            match self.sync_one(view, so).await {
                Ok((written, owner_added)) => {
                    report.written += u64::from(written);
                    report.owners_added += u64::from(owner_added);
                    report.unchanged += u64::from(!written);
                }
                Err(e) => failures.push(e),
            }
        }
        if !view.spec.spc.secret_objects.is_empty() {
            self.metrics.secret_sync(
                provider_label(Some(view.spec.spc.provider.as_str())),
                report.written,
                started.elapsed(),
            );
        }
        if failures.is_empty() {
            Ok(report)
        } else {
            Err(SyncError { failures })
        }
    }

    fn namespace(view: &VolumeView) -> String {
        view.spec
            .pod
            .namespace
            .clone()
            .or_else(|| view.spec.spc.namespace.clone())
            .unwrap_or_else(|| "default".to_owned())
    }

    /// Returns (data written, owner reference added).
    async fn sync_one(
        &self,
        view: &VolumeView,
        so: &SecretObjectSpec,
    ) -> Result<(bool, bool), K8sError> {
        let namespace = Self::namespace(view);
        let name = so.secret_name.as_str();
        let object = object_name("Secret", &namespace, name);
        let data = secret_data(so, view, &object)?;
        let labels = labels_of(so);
        let digest = self.digest(so, &labels, &data);
        let key = (namespace.clone(), name.to_owned());
        let known = self
            .synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);

        let mut owners = match &known {
            Some(k) => k.owners.clone(),
            None => {
                // First time this process writes it: never take over a Secret we do not manage.
                match api.get_metadata_opt(name).await {
                    Ok(Some(meta)) => {
                        let managed = meta
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(MANAGED_LABEL))
                            .is_some_and(|v| v == "true");
                        if !managed {
                            return Err(K8sError::Foreign { object });
                        }
                        owner_uids(&meta.metadata)
                    }
                    Ok(None) => BTreeSet::new(),
                    Err(e) => return Err(K8sError::api("get", object, e)),
                }
            }
        };
        let mut resource_version = known.as_ref().and_then(|k| k.resource_version.clone());

        let needs_apply = known.as_ref().is_none_or(|k| k.digest != digest);
        if needs_apply {
            let body = ApplyBody {
                name,
                namespace: &namespace,
                secret_type: &so.secret_type,
                labels: &labels,
                annotations: &so.annotations,
                data: &data,
            };
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api
                .patch_metadata(name, &params, &Patch::Apply(&body))
                .await
            {
                Ok(meta) => {
                    self.metrics.k8s_write("secret", "ok");
                    owners = owner_uids(&meta.metadata);
                    resource_version = meta.metadata.resource_version.clone();
                    info!(secret = %object, keys = data.len(), "synced Secret written");
                }
                Err(e) => {
                    self.metrics.k8s_write("secret", "error");
                    // Unknown state: check again next time.
                    self.synced
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                    return Err(K8sError::api("apply", object, e));
                }
            }
        }

        let mut owner_added = false;
        if let (Some(pod), Some(uid)) = (&view.spec.pod.name, &view.spec.pod.uid)
            && !owners.contains(uid)
        {
            let patch = json!({
                "metadata": {
                    "ownerReferences": [{
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": pod,
                        "uid": uid,
                    }]
                }
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            match api
                .patch_metadata(name, &params, &Patch::Strategic(&patch))
                .await
            {
                Ok(meta) => {
                    self.metrics.k8s_write("secret_owner", "ok");
                    owners = owner_uids(&meta.metadata);
                    owners.insert(uid.clone());
                    resource_version = meta.metadata.resource_version.clone();
                    owner_added = true;
                    debug!(secret = %object, pod, "owner reference added");
                }
                Err(e) => {
                    self.metrics.k8s_write("secret_owner", "error");
                    return Err(K8sError::api("add owner reference to", object, e));
                }
            }
        }
        self.synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key,
                Synced {
                    digest,
                    owners,
                    resource_version,
                },
            );
        Ok((needs_apply, owner_added))
    }

    /// Adopts the Secrets a predecessor process wrote for `view` with the values it serves now
    /// (a takeover of an unchanged volume): records each one that exists and is ours as
    /// written, with its owners and resourceVersion (one metadata GET each), so later syncs and
    /// resyncs treat it as if this process had written it. `false`: at least one is missing
    /// or not ours, and `sync` must run.
    pub async fn adopt(&self, view: &VolumeView) -> Result<bool, K8sError> {
        let namespace = Self::namespace(view);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let mut complete = true;
        for so in &view.spec.spc.secret_objects {
            let object = object_name("Secret", &namespace, &so.secret_name);
            let meta = match api.get_metadata_opt(&so.secret_name).await {
                Ok(Some(m)) => m.metadata,
                Ok(None) => {
                    complete = false;
                    continue;
                }
                Err(e) => return Err(K8sError::api("get", object, e)),
            };
            let managed = meta
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_LABEL))
                .is_some_and(|v| v == "true");
            if !managed {
                complete = false;
                continue;
            }
            let data = secret_data(so, view, &object)?;
            let digest = self.digest(so, &labels_of(so), &data);
            self.synced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    (namespace.clone(), so.secret_name.clone()),
                    Synced {
                        digest,
                        owners: owner_uids(&meta),
                        resource_version: meta.resource_version.clone(),
                    },
                );
        }
        Ok(complete)
    }

    /// Checks that the Secrets of `view` still are as last written (one metadata GET each);
    /// a deleted or changed one is forgotten, so the next `sync` writes it again.
    pub async fn verify(&self, view: &VolumeView) -> Result<usize, K8sError> {
        let namespace = Self::namespace(view);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let mut stale = 0;
        for so in &view.spec.spc.secret_objects {
            let key = (namespace.clone(), so.secret_name.clone());
            let known_rv = self
                .synced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .map(|k| k.resource_version.clone());
            let Some(known_rv) = known_rv else {
                continue;
            };
            let current = match api.get_metadata_opt(&so.secret_name).await {
                Ok(m) => m.and_then(|m| m.metadata.resource_version),
                Err(e) if is_not_found(&e) => None,
                Err(e) => {
                    return Err(K8sError::api(
                        "get",
                        object_name("Secret", &namespace, &so.secret_name),
                        e,
                    ));
                }
            };
            if current.is_none() || current != known_rv {
                stale += 1;
                self.synced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
            }
        }
        Ok(stale)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CERT1: &str = "-----BEGIN CERTIFICATE-----\nMIIBAAA=\n-----END CERTIFICATE-----";
    const CERT2: &str = "-----BEGIN CERTIFICATE-----\nMIIBBBB=\n-----END CERTIFICATE-----";
    const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQ==\n-----END EC PRIVATE KEY-----";

    #[test]
    fn tls_extraction_from_a_bundle() {
        let bundle = format!("junk\n{KEY}\n{CERT1}\n\n{CERT2}\ntrailing");
        let crt = tls_certificates(bundle.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(crt.to_vec()).unwrap(),
            format!("{CERT1}\n{CERT2}\n")
        );
        let key = tls_private_key(bundle.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(key.to_vec()).unwrap(), format!("{KEY}\n"));
        assert!(tls_certificates(b"no pem here").is_none());
        assert!(tls_private_key(CERT1.as_bytes()).is_none());
        let pkcs8 = "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----";
        assert!(tls_private_key(pkcs8.as_bytes()).is_some());
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n-----END ENCRYPTED PRIVATE KEY-----";
        assert!(tls_private_key(enc.as_bytes()).is_none());
        // Unterminated block: ignored.
        assert!(tls_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA").is_none());
    }

    #[test]
    fn apply_body_is_base64_and_debug_is_redacted() {
        let mut data = SecretData::new();
        data.insert("password".into(), Zeroizing::new(b"hunter2".to_vec()));
        let labels = BTreeMap::from([(MANAGED_LABEL.to_owned(), "true".to_owned())]);
        let annotations = BTreeMap::new();
        let body = ApplyBody {
            name: "s",
            namespace: "ns",
            secret_type: "Opaque",
            labels: &labels,
            annotations: &annotations,
            data: &data,
        };
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["data"]["password"], STANDARD.encode("hunter2"));
        assert_eq!(v["metadata"]["labels"][MANAGED_LABEL], "true");
        assert!(v["metadata"].get("annotations").is_none());
        let dbg = format!("{body:?}");
        assert!(
            dbg.contains("password") && !dbg.contains("hunter2"),
            "{dbg}"
        );
    }
}
