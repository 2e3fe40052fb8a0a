//! CSI Node service: NodePublishVolume / NodeUnpublishVolume as linear handlers of named steps,
//! NodeGetCapabilities (VOLUME_MOUNT_GROUP only: no staging), NodeGetInfo.
//!
//! ```text
//! NodePublishVolume: validate request ─> typed volume context ─> SPC (pod's namespace)
//!                    ─> token for the SPC's audience ─> VolumeSpec ─> publisher.publish
//! ```
//!
//! Concurrency is the publisher's: calls for one target are serialized, different targets run
//! in parallel. Errors become statuses in `error.rs` only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use baofs_csi::v1::node_server::Node;
use baofs_csi::v1::node_service_capability::{Rpc, Type as CapabilityType, rpc::Type as RpcType};
use baofs_csi::v1::volume_capability::AccessType;
use baofs_csi::v1::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    NodeUnstageVolumeRequest, NodeUnstageVolumeResponse,
};
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info_span, warn};

use super::context::{self, VolumeContext};
use super::error::{self, NodePublishError, NodeUnpublishError, RequestError};
use crate::observer::{CallError, CallObserver, PublishReport};
use crate::publisher::{Published, Publisher, Unpublished};
use crate::spc_source::SpcSource;
use crate::volume::{Credentials, Ownership, PodInfo, VolumeSpec};

/// Node service state.
pub struct NodeService {
    node_id: String,
    publisher: Arc<Publisher>,
    spcs: Arc<dyn SpcSource>,
    calls: Arc<dyn CallObserver>,
}

/// The pod named by a raw volume context (best effort, for events and metrics: nothing is
/// validated here).
fn pod_of(volume_context: &HashMap<String, String>) -> PodInfo {
    let get = |k: &str| volume_context.get(k).filter(|v| !v.is_empty()).cloned();
    PodInfo {
        name: get(context::POD_NAME),
        namespace: get(context::POD_NAMESPACE),
        uid: get(context::POD_UID),
        service_account: get(context::SERVICE_ACCOUNT_NAME),
    }
}

impl std::fmt::Debug for NodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeService")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// A validated NodePublishVolume request, without its maps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PublishTarget {
    volume_id: String,
    target: PathBuf,
    /// `volume_mount_group` (the pod's fsGroup), when kubelet passes it.
    group: Option<u32>,
}

fn check_target(target_path: &str) -> Result<PathBuf, RequestError> {
    if target_path.is_empty() {
        return Err(RequestError::MissingTargetPath);
    }
    let target = PathBuf::from(target_path);
    if !target.is_absolute() {
        return Err(RequestError::RelativeTargetPath(target_path.to_owned()));
    }
    Ok(target)
}

/// Step 1: the request's own fields, in upstream's order of messages.
fn validate_publish(req: &NodePublishVolumeRequest) -> Result<PublishTarget, RequestError> {
    if req.volume_id.is_empty() {
        return Err(RequestError::MissingVolumeId);
    }
    let target = check_target(&req.target_path)?;
    let mount = match req
        .volume_capability
        .as_ref()
        .and_then(|c| c.access_type.as_ref())
    {
        Some(AccessType::Mount(m)) => m,
        Some(AccessType::Block(_)) => return Err(RequestError::BlockAccess),
        None => return Err(RequestError::MissingCapability),
    };
    if req.volume_context.is_empty() {
        return Err(RequestError::MissingVolumeContext);
    }
    if !req.readonly {
        return Err(RequestError::NotReadOnly);
    }
    let group = match mount.volume_mount_group.as_str() {
        "" => None,
        g => Some(
            g.parse::<u32>()
                .map_err(|_| RequestError::InvalidMountGroup(g.to_owned()))?,
        ),
    };
    Ok(PublishTarget {
        volume_id: req.volume_id.clone(),
        target,
        group,
    })
}

impl NodeService {
    /// A node service publishing through `publisher`, finding SPCs in `spcs`, reporting each
    /// call to `calls`.
    pub fn new(
        node_id: String,
        publisher: Arc<Publisher>,
        spcs: Arc<dyn SpcSource>,
        calls: Arc<dyn CallObserver>,
    ) -> Self {
        Self {
            node_id,
            publisher,
            spcs,
            calls,
        }
    }

    /// Whether `target` already serves `volume_id` (a republish).
    fn serving(&self, checked: &PublishTarget) -> bool {
        self.publisher
            .status()
            .iter()
            .any(|v| v.target == checked.target && v.volume_id == checked.volume_id)
    }

    async fn publish(
        &self,
        req: NodePublishVolumeRequest,
        provider: &mut Option<String>,
    ) -> Result<Published, NodePublishError> {
        // 1. The request.
        let checked = validate_publish(&req)?;
        let NodePublishVolumeRequest {
            volume_context,
            secrets,
            ..
        } = req;
        // 2-4. Volume context, SPC, token. On a republish, last-known values keep being
        // served whatever goes wrong here; the poller keeps the credentials it has.
        let spec = match self.volume_spec(&checked, volume_context, secrets).await {
            Ok(spec) => {
                *provider = Some(spec.spc.provider.clone());
                spec
            }
            Err(e) if self.serving(&checked) => {
                warn!(
                    volume_id = %checked.volume_id,
                    target = %checked.target.display(),
                    error = %e,
                    "republish: keeping the volume as published, with its previous credentials"
                );
                return Ok(Published::Republished);
            }
            Err(e) => return Err(e),
        };
        // 5. Fetch, mount (the publisher leaves nothing mounted on failure).
        Ok(self.publisher.publish(spec, &checked.target).await?)
    }

    /// Steps 2-4: typed volume context, the SPC from the pod's namespace, the token for its
    /// audience.
    async fn volume_spec(
        &self,
        checked: &PublishTarget,
        volume_context: HashMap<String, String>,
        secrets: HashMap<String, String>,
    ) -> Result<VolumeSpec, NodePublishError> {
        let VolumeContext {
            secret_provider_class,
            pod,
            ephemeral,
            tokens,
        } = context::parse(volume_context, secrets)?;
        let namespace = pod.namespace.clone().unwrap_or_default();
        let spc = self.spcs.get(&namespace, &secret_provider_class).await?;
        let token = tokens.select(spc.params.audience.as_deref(), &spc.reference())?;
        debug!(
            spc = %spc.reference(),
            ephemeral,
            token_source = ?tokens.source(),
            "volume context parsed"
        );
        Ok(VolumeSpec {
            id: checked.volume_id.clone(),
            spc,
            pod,
            credentials: Credentials::Jwt(token),
            ownership: Ownership {
                uid: 0,
                gid: checked.group.unwrap_or(0),
            },
        })
    }

    async fn unpublish(
        &self,
        req: &NodeUnpublishVolumeRequest,
    ) -> Result<Unpublished, NodeUnpublishError> {
        if req.volume_id.is_empty() {
            return Err(RequestError::MissingVolumeId.into());
        }
        let target = check_target(&req.target_path)?;
        Ok(self.publisher.unpublish(&target).await?)
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let (volume_id, target) = (req.volume_id.clone(), req.target_path.clone());
        let pod = pod_of(&req.volume_context);
        let mut provider = None;
        let span = info_span!("NodePublishVolume", volume_id = %volume_id, target = %target);
        match self.publish(req, &mut provider).instrument(span).await {
            Ok(outcome) => {
                debug!(volume_id = %volume_id, target = %target, ?outcome, "NodePublishVolume done");
                self.calls
                    .publish_done(PublishReport {
                        pod: &pod,
                        provider: provider.as_deref(),
                        error: None,
                    })
                    .await;
                Ok(Response::new(NodePublishVolumeResponse {}))
            }
            Err(e) => {
                let error_type = e.reason();
                let status = e.into_status(&volume_id, &target);
                self.calls
                    .publish_done(PublishReport {
                        pod: &pod,
                        provider: provider.as_deref(),
                        error: Some(CallError {
                            error_type,
                            message: status.message(),
                        }),
                    })
                    .await;
                Err(status)
            }
        }
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let span = info_span!("NodeUnpublishVolume", volume_id = %req.volume_id, target = %req.target_path);
        match self.unpublish(&req).instrument(span).await {
            Ok(outcome) => {
                debug!(volume_id = %req.volume_id, target = %req.target_path, ?outcome, "NodeUnpublishVolume done");
                self.calls.unpublish_done(true);
                Ok(Response::new(NodeUnpublishVolumeResponse {}))
            }
            Err(e) => {
                self.calls.unpublish_done(false);
                Err(e.into_status(&req.volume_id, &req.target_path))
            }
        }
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        // VOLUME_MOUNT_GROUP: kubelet passes the pod's fsGroup instead of chowning a read-only
        // tree. No STAGE_UNSTAGE_VOLUME: nothing to stage.
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![NodeServiceCapability {
                r#type: Some(CapabilityType::Rpc(Rpc {
                    r#type: RpcType::VolumeMountGroup.into(),
                })),
            }],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }

    async fn node_stage_volume(
        &self,
        _request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        Err(error::unimplemented("NodeStageVolume"))
    }

    async fn node_unstage_volume(
        &self,
        _request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        Err(error::unimplemented("NodeUnstageVolume"))
    }

    async fn node_get_volume_stats(
        &self,
        _request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        Err(error::unimplemented("NodeGetVolumeStats"))
    }

    async fn node_expand_volume(
        &self,
        _request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(error::unimplemented("NodeExpandVolume"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use baofs_csi::v1::VolumeCapability;
    use baofs_csi::v1::volume_capability::{BlockVolume, MountVolume};

    use super::*;

    fn request() -> NodePublishVolumeRequest {
        NodePublishVolumeRequest {
            volume_id: "csi-abc".into(),
            target_path: "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/s/mount".into(),
            volume_capability: Some(VolumeCapability {
                access_mode: None,
                access_type: Some(AccessType::Mount(MountVolume {
                    volume_mount_group: "2000".into(),
                    ..Default::default()
                })),
            }),
            readonly: true,
            volume_context: [("secretProviderClass".to_owned(), "s".to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn validation_messages_follow_upstream() {
        let ok = validate_publish(&request()).unwrap();
        assert_eq!(ok.group, Some(2000));
        type Mutation = fn(&mut NodePublishVolumeRequest);
        let cases: [(Mutation, &str); 6] = [
            (|r| r.volume_id.clear(), "Volume ID missing in request"),
            (|r| r.target_path.clear(), "Target path missing in request"),
            (
                |r| r.volume_capability = None,
                "Volume capability missing in request",
            ),
            (
                |r| r.volume_capability = Some(VolumeCapability::default()),
                "Volume capability missing in request",
            ),
            (|r| r.readonly = false, "Readonly is not true in request"),
            (
                |r| r.volume_context.clear(),
                "Volume attributes missing in request",
            ),
        ];
        for (mutate, want) in cases {
            let mut r = request();
            mutate(&mut r);
            assert_eq!(validate_publish(&r).unwrap_err().to_string(), want);
        }
        let mut r = request();
        r.volume_capability = Some(VolumeCapability {
            access_mode: None,
            access_type: Some(AccessType::Block(BlockVolume {})),
        });
        assert!(matches!(
            validate_publish(&r),
            Err(RequestError::BlockAccess)
        ));
        let mut r = request();
        r.target_path = "relative/dir".into();
        assert!(matches!(
            validate_publish(&r),
            Err(RequestError::RelativeTargetPath(_))
        ));
        let mut r = request();
        if let Some(AccessType::Mount(m)) = r
            .volume_capability
            .as_mut()
            .and_then(|c| c.access_type.as_mut())
        {
            m.volume_mount_group = "wheel".into();
        }
        assert!(matches!(
            validate_publish(&r),
            Err(RequestError::InvalidMountGroup(_))
        ));
    }
}
