//! CSI errors: one enum per RPC that can fail, and the only place that picks gRPC codes.
//!
//! | Error | Code |
//! |---|---|
//! | bad request, volume context, SPC, target | `InvalidArgument` |
//! | SPC not found (`failed to get secretproviderclass <ns>/<name>`) | `NotFound` |
//! | OpenBao answered 403 | `PermissionDenied` |
//! | OpenBao unreachable, timing out, 5xx, 429 | `Unavailable` |
//! | another volume at the target | `AlreadyExists` |
//! | the volume id is published at another target | `FailedPrecondition` |
//! | no free volume slot | `ResourceExhausted` |
//! | anything else | `Internal` |
//!
//! Every status returned to kubelet is logged here too: CSI errors are otherwise visible only
//! in kubelet's events. Messages name the SPC, object or path, never a value (the errors they
//! come from are built that way; see `secret` and `context`).

use tonic::{Code, Status};
use tracing::{error, warn};

use super::context::ContextError;
use crate::cache::CacheError;
use crate::provider::ProviderError;
use crate::publisher::PublishError;
use crate::spc_source::SpcLookupError;

/// A request that fails validation before anything is looked up (upstream's messages).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// `volume_id` is empty.
    #[error("Volume ID missing in request")]
    MissingVolumeId,
    /// `target_path` is empty.
    #[error("Target path missing in request")]
    MissingTargetPath,
    /// `target_path` is relative.
    #[error("Target path '{0}' is not absolute")]
    RelativeTargetPath(String),
    /// No `volume_capability`, or it has no access type.
    #[error("Volume capability missing in request")]
    MissingCapability,
    /// The capability asks for a block device.
    #[error("Volume capability with block access is not supported: secrets are mounted as files")]
    BlockAccess,
    /// `volume_context` is empty.
    #[error("Volume attributes missing in request")]
    MissingVolumeContext,
    /// `readonly` is false.
    #[error("Readonly is not true in request")]
    NotReadOnly,
    /// `volume_mount_group` is not a numeric group id.
    #[error("volume_mount_group '{0}' is not a numeric group id")]
    InvalidMountGroup(String),
}

/// Why a NodePublishVolume failed.
#[derive(Debug, thiserror::Error)]
pub enum NodePublishError {
    /// The request is malformed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The volume context is incomplete or invalid.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// The SPC could not be obtained.
    #[error(transparent)]
    Spc(#[from] SpcLookupError),
    /// Publishing failed (nothing is left mounted).
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Why a NodeUnpublishVolume failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeUnpublishError {
    /// The request is malformed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Unmounting failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl NodePublishError {
    /// The gRPC code kubelet sees.
    pub fn code(&self) -> Code {
        match self {
            NodePublishError::Request(_) | NodePublishError::Context(_) => Code::InvalidArgument,
            NodePublishError::Spc(e) => spc_code(e),
            NodePublishError::Publish(e) => publish_code(e),
        }
    }
}

impl NodePublishError {
    /// A stable reason for the `error_type` metric label: upstream's
    /// (`pkg/errors/errors.go`) where one fits.
    pub fn reason(&self) -> &'static str {
        match self {
            NodePublishError::Request(_) => "InvalidRequest",
            NodePublishError::Context(_) => "InvalidVolumeContext",
            NodePublishError::Spc(SpcLookupError::NotFound { .. }) => "SecretProviderClassNotFound",
            NodePublishError::Spc(SpcLookupError::Api { .. }) => "SecretProviderClassLookupFailed",
            NodePublishError::Spc(_) => "InvalidSecretProviderClass",
            NodePublishError::Publish(p) => match p {
                PublishError::InvalidTarget { .. } | PublishError::State { .. } => {
                    "FailedToEnsureMountPoint"
                }
                PublishError::Provider(_) => "ProviderError",
                PublishError::Conflict { .. } | PublishError::Cache(_) | PublishError::Fuse(_) => {
                    "FailedToMount"
                }
            },
        }
    }
}

impl NodeUnpublishError {
    /// The gRPC code kubelet sees.
    pub fn code(&self) -> Code {
        match self {
            NodeUnpublishError::Request(_) => Code::InvalidArgument,
            NodeUnpublishError::Publish(e) => publish_code(e),
        }
    }
}

fn spc_code(e: &SpcLookupError) -> Code {
    match e {
        SpcLookupError::NotFound { .. } => Code::NotFound,
        SpcLookupError::InvalidName { .. }
        | SpcLookupError::Invalid { .. }
        | SpcLookupError::Mismatch { .. } => Code::InvalidArgument,
        SpcLookupError::InvalidObject { .. } => Code::InvalidArgument,
        SpcLookupError::Api { .. } => Code::Unavailable,
        SpcLookupError::Read { .. } => Code::Internal,
    }
}

fn provider_code(e: &ProviderError) -> Code {
    if matches!(e, ProviderError::TlsConfig { .. }) {
        // The SPC names a CA/cert file that is missing or unusable: fix the SPC.
        Code::InvalidArgument
    } else if e.is_permission_denied() {
        Code::PermissionDenied
    } else if e.is_transient() {
        Code::Unavailable
    } else {
        Code::Internal
    }
}

fn publish_code(e: &PublishError) -> Code {
    match e {
        PublishError::InvalidTarget { .. } => Code::InvalidArgument,
        PublishError::Conflict { .. } => Code::AlreadyExists,
        PublishError::Provider(p) => provider_code(p),
        PublishError::Cache(c) => match c {
            CacheError::InvalidVolumeId(_) | CacheError::TooManyNodes { .. } => {
                Code::InvalidArgument
            }
            CacheError::AlreadyExists(_) => Code::FailedPrecondition,
            CacheError::NoFreeSlot => Code::ResourceExhausted,
            CacheError::LayoutMismatch { .. } => Code::Internal,
        },
        PublishError::Fuse(_) | PublishError::State { .. } => Code::Internal,
    }
}

/// Turns an RPC's error into the status kubelet gets, logging it (with the volume and target)
/// first. Internal errors are logged at error level, the others (caller's or store's fault) at
/// warn.
pub fn to_status(
    rpc: &'static str,
    volume_id: &str,
    target: &str,
    code: Code,
    err: &dyn std::error::Error,
) -> Status {
    let message = err.to_string();
    if code == Code::Internal {
        error!(rpc, volume_id, target, code = ?code, error = %message, "CSI call failed");
    } else {
        warn!(rpc, volume_id, target, code = ?code, error = %message, "CSI call failed");
    }
    Status::new(code, message)
}

impl NodePublishError {
    /// Logs and converts (see [`to_status`]).
    pub fn into_status(self, volume_id: &str, target: &str) -> Status {
        to_status("NodePublishVolume", volume_id, target, self.code(), &self)
    }
}

impl NodeUnpublishError {
    /// Logs and converts (see [`to_status`]).
    pub fn into_status(self, volume_id: &str, target: &str) -> Status {
        to_status("NodeUnpublishVolume", volume_id, target, self.code(), &self)
    }
}

/// An RPC this node-only, stage-less driver does not implement.
pub fn unimplemented(rpc: &'static str) -> Status {
    warn!(rpc, "CSI call not implemented by this driver");
    Status::unimplemented(format!("{rpc} is not implemented by baofs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(
            NodePublishError::from(RequestError::NotReadOnly).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            NodePublishError::from(ContextError::MissingSecretProviderClass).code(),
            Code::InvalidArgument
        );
        let nf = SpcLookupError::NotFound {
            namespace: "ns".into(),
            name: "n".into(),
            detail: "x".into(),
        };
        assert_eq!(
            NodePublishError::from(SpcLookupError::NotFound {
                namespace: "ns".into(),
                name: "n".into(),
                detail: "x".into(),
            })
            .reason(),
            "SecretProviderClassNotFound"
        );
        let s = NodePublishError::from(nf).into_status("v", "/t");
        assert_eq!(s.code(), Code::NotFound);
        assert!(
            s.message()
                .starts_with("failed to get secretproviderclass ns/n")
        );
        let conflict = PublishError::Conflict {
            target: "/t".into(),
            volume: "other".into(),
        };
        assert_eq!(NodePublishError::from(conflict).code(), Code::AlreadyExists);
        let bad_id = PublishError::Cache(CacheError::InvalidVolumeId("a/b".into()));
        assert_eq!(NodePublishError::from(bad_id).code(), Code::InvalidArgument);
        assert_eq!(
            NodeUnpublishError::from(RequestError::MissingTargetPath).code(),
            Code::InvalidArgument
        );
        assert_eq!(unimplemented("NodeStageVolume").code(), Code::Unimplemented);
    }
}
