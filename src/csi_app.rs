//! Composition root of `baofs csi`: the CSI node driver.
//!
//! ```text
//! --spc-dir DIR ─> DirSpcSource ──────────┐  (or, without --spc-dir: the Kubernetes API,
//! Kubernetes API ─> KubeSpcSource ────────┤   --kubeconfig FILE or in-cluster config)
//! OpenBao provider ─> TokenRefresher ─> MeteredProvider ─> Publisher (FUSE hub, pollers)
//!                  observer: KubeObserver (Secrets, SPCPS, events, metrics) | MetricsObserver
//!                                                     csi_server::serve (unix socket, 0600)
//! status socket (`baofs status`), metrics (--metrics-addr, GET /metrics)
//! SIGTERM/SIGINT ─> stop accepting, finish calls ─> publisher.shutdown ─> remove sockets
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::cli::CsiArgs;
use crate::csi_server::{self, ServeConfig, SocketError};
use crate::k8s::{self, K8sError, KubeObserver, KubeSpcSource};
use crate::metrics::{MeteredProvider, Metrics, MetricsObserver, ScrapeHook};
use crate::observer::{CallObserver, VolumeObserver};
use crate::provider::{OpenBaoProvider, Provider, ProviderError};
use crate::publisher::{PublishError, Publisher, PublisherConfig};
use crate::spc_source::{DirSpcSource, SpcSource};
use crate::status;

/// FUSE loops of the hub.
const FUSE_THREADS: usize = 2;
/// How often synced Secrets are checked for deletion or foreign changes (upstream requeues
/// its sync every 5 minutes).
const SECRET_RESYNC: Duration = Duration::from_secs(300);

/// Why `baofs csi` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CsiAppError {
    /// `--spc-dir` is not a directory.
    #[error("--spc-dir {path}: {reason}")]
    SpcDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The Kubernetes client could not be configured.
    #[error(transparent)]
    Kube(#[from] K8sError),
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

fn dir_source(dir: &PathBuf) -> Result<Arc<dyn SpcSource>, CsiAppError> {
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

/// Where SPCs come from and who observes volumes.
struct Wiring {
    spcs: Arc<dyn SpcSource>,
    provider: Arc<dyn Provider>,
    observer: Arc<dyn VolumeObserver>,
    calls: Arc<dyn CallObserver>,
    kube: Option<Arc<KubeObserver>>,
}

/// Kubernetes is used when SPCs come from the API (no `--spc-dir`) or a kubeconfig is given.
async fn wire(args: &CsiArgs, metrics: &Arc<Metrics>) -> Result<Wiring, CsiAppError> {
    // Volumes of one identity share a static read made within half a poll interval (issue 6).
    let mut config = args.openbao.config();
    config.share_window = args.rotation_poll_interval / 2;
    let openbao: Arc<dyn Provider> = Arc::new(OpenBaoProvider::new(config)?);
    if let (Some(dir), None) = (&args.spc_dir, &args.kubeconfig) {
        let spcs = dir_source(dir)?;
        let observer = Arc::new(MetricsObserver::new(Arc::clone(metrics)));
        return Ok(Wiring {
            spcs,
            provider: Arc::new(MeteredProvider::new(openbao, Arc::clone(metrics))),
            observer: observer.clone(),
            calls: observer,
            kube: None,
        });
    }
    let clients = k8s::clients(args.kubeconfig.as_deref()).await?;
    let client = clients.call.clone();
    info!(
        source = %k8s::describe_source(args.kubeconfig.as_ref()),
        "Kubernetes API: SPCs, synced Secrets, pod status, events"
    );
    let spcs: Arc<dyn SpcSource> = match &args.spc_dir {
        Some(dir) => dir_source(dir)?,
        None => KubeSpcSource::start(&clients),
    };
    let refreshing: Arc<dyn Provider> =
        Arc::new(k8s::token::TokenRefresher::new(openbao, client.clone()));
    let observer = KubeObserver::new(client, &args.nodeid, Arc::clone(metrics));
    Ok(Wiring {
        spcs,
        provider: Arc::new(MeteredProvider::new(refreshing, Arc::clone(metrics))),
        observer: observer.clone(),
        calls: observer.clone(),
        kube: Some(observer),
    })
}

/// Serves metrics unless `--metrics-addr` is empty; a bind failure is logged, not fatal (the
/// driver serves volumes without metrics rather than not at all).
async fn serve_metrics(
    args: &CsiArgs,
    metrics: &Arc<Metrics>,
    publisher: &Arc<Publisher>,
) -> Option<tokio::task::JoinHandle<()>> {
    if args.metrics_addr.is_empty() {
        return None;
    }
    let weak = Arc::downgrade(publisher);
    let hook: ScrapeHook = Arc::new(move |m: &Metrics| {
        if let Some(p) = weak.upgrade() {
            let volumes = p.status();
            let bytes = volumes
                .iter()
                .flat_map(|v| v.objects.iter().map(|o| o.size))
                .sum();
            m.set_served(volumes.len(), bytes);
        }
    });
    match crate::metrics::serve(&args.metrics_addr, Arc::clone(metrics), hook).await {
        Ok((_, task)) => Some(task),
        Err(e) => {
            warn!(error = %e, "metrics are not served");
            None
        }
    }
}

/// Runs `baofs csi` until SIGTERM or SIGINT.
pub async fn run_csi(args: CsiArgs) -> Result<(), CsiAppError> {
    for w in crate::hardening::harden_process() {
        warn!("{w}");
    }
    // 1. Inputs, before anything is mounted or bound.
    let socket_path = csi_server::parse_endpoint(&args.endpoint)?;
    let metrics = Arc::new(Metrics::new());
    metrics.install_global();
    let Wiring {
        spcs,
        provider,
        observer,
        calls,
        kube,
    } = wire(&args, &metrics).await?;
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
        observer,
    )?;
    let socket = match csi_server::bind_private(&socket_path) {
        Ok(s) => s,
        Err(e) => {
            publisher.shutdown().await;
            return Err(e.into());
        }
    };
    let metrics_task = serve_metrics(&args, &metrics, &publisher).await;
    let maintenance = kube.as_ref().map(|k| k.spawn_maintenance(SECRET_RESYNC));
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
        calls,
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
    if let Some(task) = maintenance {
        task.abort();
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
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
