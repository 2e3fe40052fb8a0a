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
use tracing::{debug, info, warn};

use crate::cli::CsiArgs;
use crate::csi_server::{self, ServeConfig, SocketError};
use crate::k8s::{self, K8sError, KubeObserver, KubeSpcSource};
use crate::metrics::{MeteredProvider, Metrics, MetricsObserver, ScrapeHook};
use crate::observer::{CallObserver, VolumeObserver};
use crate::provider::{OpenBaoProvider, Provider, ProviderError};
use crate::publisher::{PublishError, Publisher, PublisherConfig};
use crate::spc_source::{DirSpcSource, SpcSource};
use crate::status;
use crate::takeover::{self, Checkpointer, Handover, Released, Secrets, Standby};

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
    /// A running driver owns the state directory and this one cannot take over from it.
    #[error("a running baofs csi serves this --state-dir and its hub cannot be taken over: {0}")]
    Takeover(#[from] takeover::TakeoverError),
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
    /// What the provider hands a successor (version key, login tokens).
    handover: Arc<dyn Handover>,
}

/// Kubernetes is used when SPCs come from the API (no `--spc-dir`) or a kubeconfig is given.
/// `handed`: a predecessor's credentials: its version key, so unchanged objects keep their
/// versions (and inodes), and its login tokens, so volumes read without logging in again.
async fn wire(
    args: &CsiArgs,
    metrics: &Arc<Metrics>,
    handed: Option<&Secrets>,
) -> Result<Wiring, CsiAppError> {
    // Volumes of one identity share a static read made within half a poll interval (issue 6).
    let mut config = args.openbao.config();
    config.share_window = args.rotation_poll_interval / 2;
    let openbao = match handed.and_then(|s| s.version_key.clone()) {
        Some(key) => OpenBaoProvider::with_version_key(config, key)?,
        None => OpenBaoProvider::new(config)?,
    };
    if let Some(logins) = handed.and_then(|s| s.logins.as_ref()) {
        match openbao.import_logins(logins) {
            Some(n) => info!(
                tokens = n,
                "took over the predecessor's OpenBao login tokens"
            ),
            None => {
                warn!("the predecessor's OpenBao login tokens are unreadable: logging in again")
            }
        }
    }
    let openbao = Arc::new(openbao);
    let handover: Arc<dyn Handover> = openbao.clone();
    if let Some(leases) = handed.and_then(|s| s.leases.as_ref()) {
        take_leases(&*handover, leases);
    }
    let openbao: Arc<dyn Provider> = openbao;
    if let (Some(dir), None) = (&args.spc_dir, &args.kubeconfig) {
        let spcs = dir_source(dir)?;
        let observer = Arc::new(MetricsObserver::new(Arc::clone(metrics)));
        return Ok(Wiring {
            spcs,
            provider: Arc::new(MeteredProvider::new(openbao, Arc::clone(metrics))),
            observer: observer.clone(),
            calls: observer,
            kube: None,
            handover,
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
        handover,
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

/// Takes over a predecessor's dynamic secrets (logged: how many volumes, never what).
fn take_leases(handover: &dyn Handover, leases: &[u8]) {
    match handover.take_leases(leases) {
        Some(0) => {}
        Some(n) => info!(
            volumes = n,
            "took over the predecessor's dynamic secrets and leases"
        ),
        None => warn!(
            "the predecessor's dynamic secrets are unreadable: they are issued again (its leases end at their TTL)"
        ),
    }
}

/// How long a stopping driver waits for a registered successor to finish prefetching.
const STANDBY_PATIENCE: Duration = Duration::from_secs(60);
/// Volumes refetched at once when taking over.
const PREFETCH_PARALLEL: usize = 16;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Takes over the hub `held` describes: values are refetched first (while a running owner
/// still serves, when there is one), then the owner is asked to let go on its SIGTERM, and the
/// hub is served again at once.
async fn take_over(
    args: &CsiArgs,
    config: PublisherConfig,
    provider: Arc<dyn Provider>,
    observer: Arc<dyn VolumeObserver>,
    handover: &dyn Handover,
    held: takeover::Held,
    standby: Option<Standby>,
) -> Result<Arc<Publisher>, CsiAppError> {
    let mut held = held;
    let mut volumes = takeover::restored_volumes(&held.checkpoint, held.secrets.as_ref());
    takeover::prefetch(&provider, &mut volumes, PREFETCH_PARALLEL).await;
    let mut gap_from = None;
    let mut exact = false;
    if let Some(mut standby) = standby {
        match standby.ready() {
            Ok(()) => {
                say("baofs: ready to take over from the running driver; it hands over on SIGTERM")
            }
            Err(e) => warn!(error = %e, "the running driver went away"),
        }
        match tokio::task::spawn_blocking(move || standby.wait_release()).await {
            Ok(Ok(Released::Handed { at })) => gap_from = Some(at),
            Ok(Ok(Released::Died)) => warn!(
                "the running driver ended without handing over: taking over its last checkpoint"
            ),
            Ok(Err(e)) => warn!(error = %e, "handoff failed: taking over the last checkpoint"),
            Err(e) => warn!(error = %e, "handoff task failed"),
        }
        // The final checkpoint; what was prefetched is kept for volumes that did not change.
        let state_dir = args.state_dir.clone();
        let released = std::time::Instant::now();
        let ms = move || released.elapsed().as_secs_f64() * 1e3;
        match tokio::task::spawn_blocking(move || takeover::fetch(&state_dir)).await {
            Ok(Ok(Some(last))) => {
                debug!(ms = ms(), "handoff: final checkpoint read");
                // The owner's dynamic secrets as it left them (it may have renewed or issued
                // since the first checkpoint); what this process issued meanwhile is revoked
                // with its volume.
                if let Some(leases) = last.secrets.as_ref().and_then(|s| s.leases.as_ref()) {
                    take_leases(handover, leases);
                }
                let mut last_volumes =
                    takeover::restored_volumes(&last.checkpoint, last.secrets.as_ref());
                debug!(ms = ms(), "handoff: volumes rebuilt");
                takeover::carry_over(
                    volumes,
                    &mut last_volumes,
                    &held.checkpoint,
                    &last.checkpoint,
                );
                takeover::prefetch(&provider, &mut last_volumes, PREFETCH_PARALLEL).await;
                debug!(ms = ms(), "handoff: changed volumes fetched");
                exact = gap_from.is_some();
                volumes = last_volumes;
                held = last;
            }
            Ok(Ok(None)) => warn!("the holder no longer keeps a hub: using the first checkpoint"),
            Ok(Err(e)) => {
                warn!(error = %e, "re-reading the checkpoint failed: using the first one")
            }
            Err(e) => warn!(error = %e, "re-reading the checkpoint failed"),
        }
    }
    let count = volumes.len();
    let (publisher, with_values, serving_since) = Publisher::take_over(
        config,
        provider,
        observer,
        &held.checkpoint,
        held.fd,
        volumes,
        exact,
    )
    .await?;
    info!(volumes = count, with_values, hub = %held.checkpoint.hub_dir.display(), "took over the hub the holder kept");
    say(&format!("baofs: took over {count} volumes"));
    let mut origin = format!(
        "took over {count} volumes ({with_values} with values) at {}",
        crate::timefmt::rfc3339(std::time::SystemTime::now())
    );
    if let Some(at) = gap_from {
        let gap_ms = serving_since.saturating_duration_since(at).as_secs_f64() * 1000.0;
        info!(gap_ms, "handoff complete");
        say(&format!("baofs: handoff gap {gap_ms:.1} ms"));
        origin.push_str(&format!(", handoff gap {gap_ms:.1} ms"));
    }
    publisher.set_origin(origin);
    Ok(publisher)
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
    let mut signals = Signals::install()?;

    // 2. What a holder keeps from a previous process (a crash, or a running one to replace).
    let use_holder = takeover::holder_available(&args.state_dir);
    let held = if use_holder {
        match takeover::fetch(&args.state_dir) {
            Ok(h) => h,
            Err(e) => {
                // A running driver still serves it: never pull its mounts from under it.
                if std::os::unix::net::UnixStream::connect(takeover::handoff_socket(
                    &args.state_dir,
                ))
                .is_ok()
                {
                    return Err(CsiAppError::Takeover(e));
                }
                warn!(error = %e, "cannot take over the hub the holder keeps: releasing it (its mounts are detached)");
                takeover::abandon(&args.state_dir);
                None
            }
        }
    } else {
        info!(
            holder = %crate::holder::socket_path(&args.state_dir).display(),
            "no holder: mounts will not survive a restart of this process"
        );
        None
    };
    let standby = held
        .as_ref()
        .and_then(|h| Standby::connect(&h.checkpoint.handoff_socket));
    if standby.is_some() {
        info!("a driver serves this state directory: taking over when it stops");
    }
    let Wiring {
        spcs,
        provider,
        observer,
        calls,
        kube,
        handover,
    } = wire(
        &args,
        &metrics,
        held.as_ref().and_then(|h| h.secrets.as_ref()),
    )
    .await?;

    // 3. The hub: taken over (values refetched first), or mounted fresh; then the socket.
    let rotation = args
        .enable_secret_rotation
        .then_some(args.rotation_poll_interval);
    let config = PublisherConfig {
        state_dir: args.state_dir.clone(),
        rotation,
        fuse_threads: FUSE_THREADS,
        create_missing_targets: true,
    };
    let publisher = match held {
        Some(h) => take_over(&args, config, provider, observer, &*handover, h, standby).await?,
        None => Publisher::start(config, provider, observer)?,
    };
    let lost = publisher.take_lost_targets();
    if !lost.is_empty() {
        let pods = takeover::lost_pods(&args.state_dir, &lost);
        if let Some(k) = &kube {
            k.report_lost(&pods).await;
        }
        for (target, pod) in &pods {
            warn!(
                target = %target.display(),
                pod_namespace = pod.namespace.as_deref().unwrap_or("-"),
                pod_name = pod.name.as_deref().unwrap_or("-"),
                "this pod lost its secrets volume (driver and holder both stopped); recreate it"
            );
        }
    }
    let checkpointing = use_holder.then(|| {
        let checkpointer = Checkpointer::new(&args.state_dir);
        let task =
            publisher.set_checkpointer(Arc::clone(&checkpointer), Some(Arc::clone(&handover)));
        (checkpointer, task)
    });
    if let Some((c, _)) = &checkpointing {
        c.commit().await;
    }
    let standby_slot: takeover::StandbySlot = Arc::default();
    let handoff_task = match &checkpointing {
        Some(_) => match takeover::serve_handoff(&args.state_dir, Arc::clone(&standby_slot)) {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(error = %e, "planned handoffs are unavailable (no handoff socket)");
                None
            }
        },
        None => None,
    };
    let socket = match csi_server::bind_private(&socket_path) {
        Ok(s) => s,
        Err(e) => {
            // With a holder the volumes stay for the next start; without one, clean up.
            if checkpointing.is_none() {
                publisher.shutdown().await;
            }
            return Err(e.into());
        }
    };
    let metrics_task = serve_metrics(&args, &metrics, &publisher).await;
    let maintenance = kube.as_ref().map(|k| k.spawn_maintenance(SECRET_RESYNC));
    let mut status = match status::serve(&args.state_dir, Arc::clone(&publisher)) {
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

    // 4a. With a holder, nothing is unmounted: a successor waiting on the handoff socket takes
    //     over now; otherwise the next start does. The final checkpoint comes first. With no
    //     volume and no successor there is nothing to keep: the hub goes (4b).
    if let Some((checkpointer, task)) = checkpointing {
        let standby = takeover::take_standby(&standby_slot, STANDBY_PATIENCE).await;
        if let Some(task) = handoff_task {
            task.abort();
        }
        if standby.is_none() && publisher.status().is_empty() {
            task.abort();
            takeover::abandon(&args.state_dir);
            let _ = std::fs::remove_file(takeover::handoff_socket(&args.state_dir));
            let _ = std::fs::remove_file(takeover::record_path(&args.state_dir));
        } else {
            hand_over(
                &args,
                &publisher,
                checkpointer,
                task,
                standby,
                &socket,
                status.take(),
            )
            .await;
        }
    } else if let Some(task) = handoff_task {
        task.abort();
    }

    // 4b. No holder: unmount everything, wipe, remove the sockets.
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

/// Stops without unmounting anything: the final checkpoint goes to the holder, a ready
/// successor is told to take over, and the process exits at once (no destructor may unmount;
/// our end of the handoff socket closing tells the successor we are gone).
async fn hand_over(
    args: &CsiArgs,
    publisher: &Arc<Publisher>,
    checkpointer: Arc<Checkpointer>,
    task: tokio::task::JoinHandle<()>,
    standby: Option<std::os::unix::net::UnixStream>,
    socket: &csi_server::PrivateSocket,
    status: Option<tokio::task::JoinHandle<()>>,
) {
    publisher.quiesce().await;
    task.abort();
    match tokio::task::spawn_blocking(move || checkpointer.write_now()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "the final checkpoint was not written; the successor uses the previous one")
        }
        Err(e) => warn!(error = %e, "the final checkpoint task failed"),
    }
    if let Some(task) = status {
        task.abort();
        status::remove_socket(&args.state_dir);
    }
    csi_server::remove_socket(socket);
    let volumes = publisher.status().len();
    match standby {
        Some(mut stream) => {
            if let Err(e) = takeover::release(&mut stream) {
                warn!(error = %e, "telling the successor failed; it takes over when we exit");
            }
            info!(volumes, "handed over to a successor");
            say("baofs: handed over to a successor");
        }
        None => {
            let _ = std::fs::remove_file(takeover::handoff_socket(&args.state_dir));
            info!(
                volumes,
                "stopping without unmounting: the holder keeps the volumes for the next start"
            );
            say(&format!("baofs: left {volumes} volumes to the holder"));
        }
    }
    std::process::exit(0);
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
