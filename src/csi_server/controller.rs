//! CSI Controller service, reduced to ControllerGetCapabilities answering one `UNKNOWN` RPC
//! capability, exactly as the upstream driver does (`controllerserver.go`).
//!
//! baofs is node-only and does not advertise CONTROLLER_SERVICE, so kubelet and the external
//! sidecars never call it. It exists because conformance tools ask anyway: csi-sanity v5.4.0's
//! Node Service setup calls ControllerGetCapabilities unconditionally (`pkg/sanity/node.go`)
//! and requires a non-empty list (Go cannot tell an empty repeated field from nil). Every other
//! controller RPC is Unimplemented (the generated default stubs).

use baofs_csi::v1::controller_server::Controller;
use baofs_csi::v1::controller_service_capability::{Rpc, Type, rpc::Type as RpcType};
use baofs_csi::v1::{
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerServiceCapability,
};
use tonic::{Request, Response, Status};

/// The empty controller.
#[derive(Debug, Clone, Copy, Default)]
pub struct ControllerService;

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![ControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: RpcType::Unknown.into(),
                })),
            }],
        }))
    }
}
