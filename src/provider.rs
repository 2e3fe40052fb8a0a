//! The provider stage: turns a volume's objects into secret values.
//!
//! `Provider` is the seam between the volume and the secret store. The OpenBao implementation
//! (`provider::openbao`) is the only module that talks HTTP (reqwest stays inside it). The poller
//! and the publish path call `fetch`; neither knows about OpenBao.

pub mod openbao;

use std::future::Future;
use std::pin::Pin;

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
}

/// Fetches every object of a volume.
pub trait Provider: Send + Sync {
    /// Fetches all objects of `spec`, in the order of `spec.objects`. Fails as a whole if any
    /// object fails: a volume is never served half-fetched.
    fn fetch<'a>(
        &'a self,
        spec: &'a VolumeSpec,
    ) -> BoxFuture<'a, Result<Vec<FetchedObject>, ProviderError>>;
}
