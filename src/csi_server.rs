//! The CSI gRPC edge: a private Unix socket, the Identity and Node services. tonic stays in
//! here (and in the `baofs-csi` crate that holds the generated code).
//!
//! ```text
//! kubelet ─gRPC over unix socket (0600)─> identity / node ─> SpcSource, Publisher
//!                                         controller: capabilities only (none)
//! ```
//!
//! `node.rs` validates and parses, then calls the publisher; `context.rs` types the volume
//! context; `error.rs` is the only place that picks gRPC codes and logs what kubelet is told.

pub mod context;
pub mod controller;
pub mod error;
pub mod identity;
pub mod node;

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use baofs_csi::v1::controller_server::ControllerServer;
use baofs_csi::v1::identity_server::IdentityServer;
use baofs_csi::v1::node_server::NodeServer;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

use crate::observer::CallObserver;
use crate::publisher::Publisher;
use crate::spc_source::SpcSource;

pub use identity::IdentityService;
pub use node::NodeService;

/// Why the socket could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// `--endpoint` is not a unix socket address.
    #[error(
        "invalid --endpoint '{endpoint}': {reason} (expected unix:///path/to/csi.sock or a path)"
    )]
    Endpoint {
        /// What was given.
        endpoint: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Something that is not a socket is in the way.
    #[error("{path} exists and is not a socket; refusing to remove it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A live process already serves on that socket.
    #[error("{path} is in use: another process accepts connections on it")]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// A filesystem or socket call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Serving failed.
    #[error("serving CSI: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// The socket path of `--endpoint`: `unix:///abs/path`, `unix:/abs/path`, `unix://rel` or a
/// bare path. Other schemes (upstream also knows `tcp://`) are refused.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf, SocketError> {
    let err = |reason| SocketError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let path = if let Some(rest) = endpoint.strip_prefix("unix://") {
        rest
    } else if let Some(rest) = endpoint.strip_prefix("unix:") {
        rest
    } else if endpoint.contains("://") {
        return Err(err("only unix sockets are supported"));
    } else {
        endpoint
    };
    if path.is_empty() {
        return Err(err("empty socket path"));
    }
    if path.ends_with('/') {
        return Err(err("the socket path is a directory"));
    }
    Ok(PathBuf::from(path))
}

/// A bound socket, owner-only, at its final path.
#[derive(Debug)]
pub struct PrivateSocket {
    listener: StdUnixListener,
    path: PathBuf,
    ino: u64,
}

impl PrivateSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds a Unix socket at `path` that only its owner (root) can connect to.
///
/// The parent directory is created. A socket already at `path` is replaced if nobody accepts
/// on it (a stale one from a previous run); anything else there is an error. To have no moment
/// where the socket is reachable with a looser mode, it is bound inside a fresh 0700 directory
/// next to `path`, chmod'ed 0600, and only then renamed into place.
pub fn bind_private(path: &Path) -> Result<PrivateSocket, SocketError> {
    let io_err = |what, path: &Path| {
        let path = path.to_owned();
        move |source| SocketError::Io { what, path, source }
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_err("creating directory", &parent))?;
    remove_stale(path)?;

    let staging = parent.join(format!(".baofs-csi-{}", std::process::id()));
    if staging.exists() {
        let _ = std::fs::remove_file(staging.join("s"));
        let _ = std::fs::remove_dir(&staging);
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io_err("creating directory", &staging))?;
    let staged = staging.join("s");
    let bound = (|| {
        let listener = StdUnixListener::bind(&staged).map_err(io_err("binding", &staged))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("chmod 0600", &staged))?;
        std::fs::rename(&staged, path).map_err(io_err("renaming socket to", path))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("configuring", path))?;
        let ino = std::fs::symlink_metadata(path)
            .map_err(io_err("stat", path))?
            .ino();
        Ok(PrivateSocket {
            listener,
            path: path.to_owned(),
            ino,
        })
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&staging);
    bound
}

/// Removes `path` if it is a socket nobody serves on; errors if it is anything else.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                what: "stat",
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse {
            path: path.to_owned(),
        });
    }
    warn!(socket = %path.display(), "removing a stale socket");
    std::fs::remove_file(path).map_err(|source| SocketError::Io {
        what: "removing stale socket",
        path: path.to_owned(),
        source,
    })
}

/// Removes the socket file if it is still the one we bound.
pub fn remove_socket(socket: &PrivateSocket) {
    match std::fs::symlink_metadata(&socket.path) {
        Ok(m) if m.file_type().is_socket() && m.ino() == socket.ino => {
            if let Err(e) = std::fs::remove_file(&socket.path) {
                warn!(socket = %socket.path.display(), error = %e, "cannot remove the socket");
            }
        }
        _ => {}
    }
}

/// What the services need to know.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// `--drivername`.
    pub driver_name: String,
    /// `--nodeid`.
    pub node_id: String,
    /// Reported as `vendor_version`.
    pub version: String,
}

/// Serves Identity, Node (and an empty Controller, see `controller.rs`) on `socket` until `shutdown` completes, then lets in-flight calls
/// finish. Probe answers ready while serving.
pub async fn serve(
    socket: &PrivateSocket,
    config: ServeConfig,
    publisher: Arc<Publisher>,
    spcs: Arc<dyn SpcSource>,
    calls: Arc<dyn CallObserver>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SocketError> {
    let listener = socket
        .listener
        .try_clone()
        .and_then(tokio::net::UnixListener::from_std)
        .map_err(|source| SocketError::Io {
            what: "listening on",
            path: socket.path.clone(),
            source,
        })?;
    let ready = Arc::new(AtomicBool::new(false));
    let identity = IdentityService::new(
        config.driver_name.clone(),
        config.version,
        Arc::clone(&ready),
    );
    let node = NodeService::new(config.node_id.clone(), publisher, spcs, calls);
    let server = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(NodeServer::new(node))
        .add_service(ControllerServer::new(controller::ControllerService));
    ready.store(true, Ordering::Release);
    info!(
        socket = %socket.path.display(),
        driver = %config.driver_name,
        node = %config.node_id,
        "serving CSI"
    );
    let result = server
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(SocketError::Serve);
    ready.store(false, Ordering::Release);
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            parse_endpoint("unix:/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            parse_endpoint("/tmp/x.sock").unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        for bad in ["tcp://127.0.0.1:10000", "unix://", "", "unix:///csi/"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("baofs-sock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn socket_is_private_and_stale_sockets_are_replaced() {
        let dir = temp("bind");
        let path = dir.join("sub/csi.sock");
        let s = bind_private(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Connectable at its final path.
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        // Live: refused.
        assert!(matches!(
            bind_private(&path),
            Err(SocketError::InUse { .. })
        ));
        drop(s);
        // Stale (nobody listens): replaced.
        let s2 = bind_private(&path).unwrap();
        remove_socket(&s2);
        assert!(!path.exists());
        // Not a socket: refused and left alone.
        std::fs::write(&path, "x").unwrap();
        assert!(matches!(
            bind_private(&path),
            Err(SocketError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x");
        // No staging directory left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
