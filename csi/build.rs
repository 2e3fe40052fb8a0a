//! Generates the CSI v1 messages and the tonic server and client stubs from `proto/csi.proto`
//! with `protox` (pure Rust: no system `protoc`).

use std::io;

/// Messages with a field the spec marks `csi_secret` ("MUST NOT be logged") that a node plugin
/// receives. Their derived `Debug` is replaced by the redacted one in `src/lib.rs`.
const SECRET_MESSAGES: &[&str] = &[
    ".csi.v1.NodePublishVolumeRequest",
    ".csi.v1.NodeStageVolumeRequest",
    ".csi.v1.NodeExpandVolumeRequest",
];

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    let fds = protox::compile(["csi.proto"], ["proto"]).map_err(io::Error::other)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The client connects with `tonic::transport::Endpoint` itself; no generated `connect`.
        .build_transport(false)
        // RPCs a service does not override answer Unimplemented (a node-only driver serves a
        // Controller service with ControllerGetCapabilities alone).
        .generate_default_stubs(true)
        .skip_debug(SECRET_MESSAGES.iter().copied())
        .compile_fds(fds)
}
