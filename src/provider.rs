//! The provider stage: turns a volume's objects into secret values.
//!
//! `Provider` is the seam between the volume and the secret store. The OpenBao implementation
//! (`provider::openbao`) is the only module that talks HTTP (reqwest stays inside it). The poller
//! and the publish path call `fetch`; the publisher calls `release` when a volume goes away;
//! neither knows about OpenBao.

pub mod openbao;

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use crate::secret::SecretBytes;
use crate::spc::ObjectPath;
use crate::volume::VolumeSpec;

pub use openbao::{OpenBaoProvider, ProviderError};

/// A boxed future, so `Provider` stays object-safe (`Arc<dyn Provider>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One object's current value, as fetched.
#[derive(Debug, Clone)]
pub struct FetchedObject {
    /// The object's path in the volume (its `objectName`).
    pub path: ObjectPath,
    /// The decoded value (after `secretKey` extraction and `encoding`).
    pub value: SecretBytes,
    /// A stable identifier of this object's content that reveals nothing about the value: a
    /// keyed HMAC-SHA256 (key random per process, never leaves memory) over the object's
    /// configuration and its bytes, prefixed with `v<N>-` for a KV v2 secret at version N.
    /// Equal content gives an equal version within one process; any change gives a new one.
    pub version: String,
    /// When this object wants to be fetched again, earlier than the poll interval: a dynamic
    /// secret whose lease must be renewed (at about two thirds of it) or re-issued. `None`
    /// when the regular interval is fine.
    pub refresh_at: Option<SystemTime>,
}

/// Fetches every object of a volume.
pub trait Provider: Send + Sync {
    /// Fetches all objects of `spec`, in the order of `spec.objects`. Fails as a whole if any
    /// object fails: a volume is never served half-fetched.
    fn fetch<'a>(
        &'a self,
        spec: &'a VolumeSpec,
    ) -> BoxFuture<'a, Result<Vec<FetchedObject>, ProviderError>>;

    /// Releases what the provider holds for `spec`'s volume (dynamic secrets' leases are
    /// revoked). Called when the volume is unpublished, or when its publish failed after a
    /// fetch. Never fails: problems are logged.
    fn release<'a>(&'a self, spec: &'a VolumeSpec) -> BoxFuture<'a, ()> {
        let _ = spec;
        Box::pin(async {})
    }
}
