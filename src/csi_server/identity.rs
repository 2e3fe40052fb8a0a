//! CSI Identity service: plugin name and version, no plugin capability (node-only: there is no
//! controller service), and Probe.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use baofs_csi::v1::identity_server::Identity;
use baofs_csi::v1::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, ProbeRequest, ProbeResponse,
};
use tonic::{Request, Response, Status};

/// Identity service state.
#[derive(Debug, Clone)]
pub struct IdentityService {
    name: String,
    version: String,
    ready: Arc<AtomicBool>,
}

impl IdentityService {
    /// `name` is `--drivername`; `ready` is set once the driver serves.
    pub fn new(name: String, version: String, ready: Arc<AtomicBool>) -> Self {
        Self {
            name,
            version,
            ready,
        }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: self.version.clone(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        // No CONTROLLER_SERVICE (upstream advertises a leftover one; every controller RPC of
        // theirs is Unimplemented), no topology constraints.
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {
            ready: Some(self.ready.load(Ordering::Acquire)),
        }))
    }
}
