//! Composition root of `baofs csi`: the CSI node driver.
//!
//! ```text
//! --spc-dir ─> SpcSource ─┐
//! OpenBao provider ─> Publisher (FUSE hub under --state-dir, pollers) ─┤
//!                                                     csi_server::serve (unix socket, 0600)
//! status socket (`baofs status`) ─────────────────────────────────────┘
//! SIGTERM/SIGINT ─> stop accepting, finish calls ─> publisher.shutdown ─> remove sockets
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::cli::CsiArgs;
use crate::csi_server::{self, ServeConfig, SocketError};
use crate::provider::{OpenBaoProvider, Provider, ProviderError};
use crate::publisher::{PublishError, Publisher, PublisherConfig};
use crate::spc_source::{DirSpcSource, SpcSource};
use crate::status;

/// FUSE loops of the hub.
const FUSE_THREADS: usize = 2;

/// Why `baofs csi` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CsiAppError {
    /// No SPC source is available.
    #[error(
        "no SecretProviderClass source: reading SPCs from the Kubernetes API is not built yet; \
         pass --spc-dir DIR (SPCs as DIR/<namespace>/<name>.yaml)"
    )]
    NoSpcSource,
    /// `--spc-dir` is not a directory.
    #[error("--spc-dir {path}: {reason}")]
    SpcDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The OpenBao client could not be built.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The FUSE hub or state directory could not be set up.
    #[error(transparent)]
    Publisher(#[from] PublishError),
    /// The socket could not be set up or served.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Installing signal handlers failed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

fn spc_source(args: &CsiArgs) -> Result<Arc<dyn SpcSource>, CsiAppError> {
    let Some(dir) = &args.spc_dir else {
        return Err(CsiAppError::NoSpcSource);
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(Arc::new(DirSpcSource::new(dir))),
        Ok(_) => Err(CsiAppError::SpcDir {
            path: dir.clone(),
            reason: "not a directory".into(),
        }),
        Err(e) => Err(CsiAppError::SpcDir {
            path: dir.clone(),
            reason: e.to_string(),
        }),
    }
}

/// Runs `baofs csi` until SIGTERM or SIGINT.
pub async fn run_csi(args: CsiArgs) -> Result<(), CsiAppError> {
    for w in crate::hardening::harden_process() {
        warn!("{w}");
    }
    // 1. Inputs, before anything is mounted or bound.
    let socket_path = csi_server::parse_endpoint(&args.endpoint)?;
    let spcs = spc_source(&args)?;
    if args.kubeconfig.is_some() {
        warn!("--kubeconfig is accepted but not used yet (SPCs come from --spc-dir)");
    }
    info!(
        metrics_addr = %args.metrics_addr,
        "metrics are not served yet; --metrics-addr is accepted for compatibility"
    );
    let provider: Arc<dyn Provider> = Arc::new(OpenBaoProvider::new(args.openbao.config())?);
    let mut signals = Signals::install()?;

    // 2. The hub, then the socket.
    let rotation = args
        .enable_secret_rotation
        .then_some(args.rotation_poll_interval);
    let publisher = Publisher::start(
        PublisherConfig {
            state_dir: args.state_dir.clone(),
            rotation,
            fuse_threads: FUSE_THREADS,
            create_missing_targets: true,
        },
        provider,
        Arc::new(crate::observer::NoObserver),
    )?;
    let socket = match csi_server::bind_private(&socket_path) {
        Ok(s) => s,
        Err(e) => {
            publisher.shutdown().await;
            return Err(e.into());
        }
    };
    let status = match status::serve(&args.state_dir, Arc::clone(&publisher)) {
        Ok(task) => Some(task),
        Err(e) => {
            warn!(error = %e, "baofs status will not see this process");
            None
        }
    };
    info!(
        rotation = ?rotation,
        state_dir = %args.state_dir.display(),
        "CSI driver started"
    );
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "baofs: serving CSI on {}", socket.path().display());
        let _ = out.flush();
    }

    // 3. Serve until a signal; in-flight calls finish first.
    let result = csi_server::serve(
        &socket,
        ServeConfig {
            driver_name: args.drivername.clone(),
            node_id: args.nodeid.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        Arc::clone(&publisher),
        spcs,
        async move {
            signals.recv().await;
            info!("signal received: stopping the CSI server");
        },
    )
    .await;

    // 4. Unmount everything, wipe, remove the sockets.
    if let Some(task) = status {
        task.abort();
        status::remove_socket(&args.state_dir);
    }
    publisher.shutdown().await;
    csi_server::remove_socket(&socket);
    info!("CSI driver stopped");
    result.map_err(Into::into)
}

/// SIGTERM and SIGINT.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, CsiAppError> {
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(CsiAppError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(CsiAppError::Signals)?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
