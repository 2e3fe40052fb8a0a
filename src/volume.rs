//! The volume spec stage: everything one secret volume needs, before anything is fetched.
//!
//! A `VolumeSpec` is the SecretProviderClass, the pod it is for, and the credential to log in
//! with. `baofs mount` builds one from files; the CSI server will build one from a
//! NodePublishVolume request. Everything after this point (provider, cache, fs) is shared.

use crate::secret::SecretString;
use crate::spc::SecretProviderClass;

/// How the provider authenticates to OpenBao for this volume.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Use this OpenBao token directly (no login).
    Token(SecretString),
    /// Log in with this JWT (a pod's service-account token) and the SPC's `roleName` at the
    /// SPC's auth mount (`kubernetes` by default; kubernetes or jwt auth method).
    Jwt(SecretString),
}

/// The pod a volume is published for (empty for `baofs mount`).
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    /// `csi.storage.k8s.io/pod.name`
    pub name: Option<String>,
    /// `csi.storage.k8s.io/pod.namespace`
    pub namespace: Option<String>,
    /// `csi.storage.k8s.io/pod.uid`
    pub uid: Option<String>,
    /// `csi.storage.k8s.io/serviceAccount.name`
    pub service_account: Option<String>,
}

/// Ownership of the files of a volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Owner of every file and directory.
    pub uid: u32,
    /// Group of every file and directory (the pod's fsGroup under CSI).
    pub gid: u32,
}

/// One secret volume, fully described.
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    /// Volume id: the CSI volume id, or a name derived from the target for `baofs mount`.
    pub id: String,
    /// The parsed and validated SecretProviderClass.
    pub spc: SecretProviderClass,
    /// The pod the volume is for.
    pub pod: PodInfo,
    /// The credential the provider uses.
    pub credentials: Credentials,
    /// Ownership of the files.
    pub ownership: Ownership,
}

impl VolumeSpec {
    /// `namespace/name` of the SPC, for error messages and logs.
    pub fn spc_ref(&self) -> String {
        match &self.spc.namespace {
            Some(ns) => format!("{ns}/{}", self.spc.name),
            None => self.spc.name.clone(),
        }
    }
}
