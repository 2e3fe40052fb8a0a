//! Composition root of `baofs mount`: one volume, no Kubernetes, the same stages the CSI
//! driver uses.
//!
//! ```text
//! SPC file + token ─> volume spec ─> provider (OpenBao) ─> cache ─> hub (FUSE) ─> bind at target
//!                                        ^                                  |
//!                                      poller ─> cache swap ─> invalidation ┘
//! ```
//!
//! Order matters for "nothing half-mounted": every input is checked and every object fetched
//! before anything is mounted; if mounting fails, what was mounted is undone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cache::{CacheError, Layout, SecretCache};
use crate::cli::MountArgs;
use crate::fs::Fs;
use crate::fuse::{self, FuseError, Hub, Unmounted};
use crate::poller::Poller;
use crate::provider::openbao::OpenBaoConfig;
use crate::provider::{OpenBaoProvider, Provider, ProviderError};
use crate::secret::SecretString;
use crate::spc::{SecretProviderClass, SpcError};
use crate::volume::{Credentials, Ownership, PodInfo, VolumeSpec};

/// Id of the single volume of `baofs mount` (its directory name in the hub).
const STANDALONE_VOLUME: &str = "volume";
/// FUSE loops of the hub.
const FUSE_THREADS: usize = 2;

/// Errors of `baofs mount`, each naming the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A file could not be read.
    #[error("reading {what} {path}: {source}")]
    ReadFile {
        /// What the file is.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The SPC is invalid.
    #[error("SecretProviderClass file {path}: {source}")]
    Spc {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: SpcError,
    },
    /// Invalid command-line input.
    #[error("{0}")]
    Input(String),
    /// The target cannot be mounted on.
    #[error("target {path}: {reason}")]
    Target {
        /// The target.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Fetching from OpenBao failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The values do not fit the volume.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Mounting or unmounting failed.
    #[error(transparent)]
    Fuse(#[from] FuseError),
    /// The state directory is unusable.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Installing signal handlers failed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

fn read_secret_file(what: &'static str, path: &Path) -> Result<SecretString, AppError> {
    let text = std::fs::read_to_string(path).map_err(|source| AppError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })?;
    let trimmed = SecretString::new(text.trim().to_owned());
    drop(SecretString::new(text));
    if trimmed.expose().is_empty() {
        return Err(AppError::Input(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    Ok(trimmed)
}

fn credentials(args: &MountArgs) -> Result<Credentials, AppError> {
    if let Some(p) = &args.token_file {
        return Ok(Credentials::Token(read_secret_file("token file", p)?));
    }
    if let Some(p) = &args.jwt_file {
        return Ok(Credentials::Jwt(read_secret_file("JWT file", p)?));
    }
    match std::env::var("BAO_TOKEN").or_else(|_| std::env::var("VAULT_TOKEN")) {
        Ok(t) if !t.trim().is_empty() => Ok(Credentials::Token(SecretString::new(t.trim().into()))),
        _ => Err(AppError::Input(
            "no OpenBao credentials: give --token-file, --jwt-file or set BAO_TOKEN".into(),
        )),
    }
}

/// Reads and validates the volume described by `args`.
pub fn volume_spec(args: &MountArgs) -> Result<VolumeSpec, AppError> {
    let text = std::fs::read_to_string(&args.spc).map_err(|source| AppError::ReadFile {
        what: "SecretProviderClass file",
        path: args.spc.clone(),
        source,
    })?;
    let mut spc = SecretProviderClass::from_yaml(&text).map_err(|source| AppError::Spc {
        path: args.spc.clone(),
        source,
    })?;
    match (&spc.namespace, &args.namespace) {
        (Some(a), Some(b)) if a != b => {
            return Err(AppError::Input(format!(
                "SecretProviderClass {} is in namespace '{a}', not '{b}' (--namespace)",
                spc.name
            )));
        }
        (None, Some(b)) => spc.namespace = Some(b.clone()),
        _ => {}
    }
    Ok(VolumeSpec {
        id: STANDALONE_VOLUME.to_owned(),
        pod: PodInfo {
            namespace: spc.namespace.clone(),
            ..PodInfo::default()
        },
        spc,
        credentials: credentials(args)?,
        ownership: Ownership {
            uid: args.uid,
            gid: args.gid,
        },
    })
}

fn check_target(target: &Path) -> Result<PathBuf, AppError> {
    let err = |reason: String| AppError::Target {
        path: target.to_owned(),
        reason,
    };
    let canonical = std::fs::canonicalize(target).map_err(|e| err(e.to_string()))?;
    if !canonical.is_dir() {
        return Err(err("not a directory".into()));
    }
    match fuse::mount::is_mount_point(&canonical) {
        Ok(true) => Err(err("already a mount point".into())),
        Ok(false) => Ok(canonical),
        Err(e) => Err(err(format!("reading /proc/self/mountinfo: {e}"))),
    }
}

/// Removes hub directories left by `baofs mount` processes that died without cleaning up.
fn clean_stale_hubs(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("hub-")) else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let path = entry.path();
        match fuse::mount::unmount(&path) {
            Ok(Unmounted::NotMounted) => {}
            Ok(how) => {
                warn!(hub = %path.display(), ?how, "unmounted a stale hub of a dead process")
            }
            Err(e) => warn!(hub = %path.display(), error = %e, "cannot unmount stale hub"),
        }
        let _ = std::fs::remove_dir(&path);
    }
}

fn prepare_hub_dir(state_dir: &Path) -> Result<PathBuf, AppError> {
    let state_err = |source| AppError::StateDir {
        path: state_dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(state_err)?;
    clean_stale_hubs(state_dir);
    let hub = state_dir.join(format!("hub-{}", std::process::id()));
    match std::fs::create_dir(&hub) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(state_err(e)),
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hub, std::fs::Permissions::from_mode(0o700)).map_err(state_err)?;
    Ok(hub)
}

/// Runs `baofs mount` until SIGTERM or SIGINT.
pub async fn run_mount(args: MountArgs) -> Result<(), AppError> {
    for w in crate::hardening::harden_process() {
        warn!("{w}");
    }
    // 1. Every input checked before anything is fetched or mounted.
    let spec = volume_spec(&args)?;
    let target = check_target(&args.target)?;
    let config = OpenBaoConfig {
        default_address: std::env::var("BAO_ADDR")
            .or_else(|_| std::env::var("VAULT_ADDR"))
            .ok(),
        request_timeout: args.request_timeout,
        retry_deadline: args.retry_deadline,
        max_object_size: args.max_object_size,
    };
    let provider: Arc<dyn Provider> = Arc::new(OpenBaoProvider::new(config)?);
    let mut stop_signals = Signals::install()?;

    // 2. Every object fetched: a volume is never mounted half-filled.
    let fetched = tokio::select! {
        r = provider.fetch(&spec) => r?,
        _ = stop_signals.recv() => {
            info!("interrupted before mounting; nothing was mounted");
            return Ok(());
        }
    };
    let cache = Arc::new(SecretCache::new());
    let layout = Layout::new(&spec.id, &spec.spc.objects)?;
    let volume = cache.insert(&spec.id, layout, spec.ownership, fetched)?;
    let fs = Arc::new(Fs::new(Arc::clone(&cache)));

    // 3. Mount the hub, then bind the volume at the target; undo on failure.
    let hub_dir = prepare_hub_dir(&args.state_dir)?;
    let hub = match Hub::mount(&hub_dir, Arc::clone(&fs), FUSE_THREADS) {
        Ok(hub) => hub,
        Err(e) => {
            let _ = std::fs::remove_dir(&hub_dir);
            return Err(e.into());
        }
    };
    if let Err(e) = hub.bind(&spec.id, &target) {
        shutdown_hub(hub, &fs, &hub_dir);
        return Err(e.into());
    }
    info!(target = %target.display(), spc = %spec.spc_ref(), objects = spec.spc.objects.len(), "mounted");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "baofs: mounted {}", target.display());
        let _ = out.flush();
    }

    // 4. Keep it fresh until told to stop.
    let poller = Arc::new(Poller::new(
        Arc::clone(&provider),
        Arc::clone(&fs),
        Arc::new(hub.invalidator()),
        args.rotation_poll_interval,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = {
        let poller = Arc::clone(&poller);
        let volume = Arc::clone(&volume);
        tokio::spawn(async move { poller.run(spec, volume, stop_rx).await })
    };
    stop_signals.recv().await;
    info!("signal received: unmounting");

    // 5. Stop polling, unmount, wipe.
    let _ = stop_tx.send(true);
    let _ = task.await;
    let result = hub.unbind(&target);
    match &result {
        Ok(how) => info!(target = %target.display(), ?how, "target unmounted"),
        Err(e) => warn!(error = %e, "unmounting target failed"),
    }
    drop(volume);
    shutdown_hub(hub, &fs, &hub_dir);
    result.map(|_| ()).map_err(Into::into)
}

fn shutdown_hub(hub: Hub, fs: &Fs, hub_dir: &Path) {
    fs.cache().clear();
    fs.clear();
    match hub.shutdown(Duration::from_secs(2)) {
        Ok(how) => info!(hub = %hub_dir.display(), ?how, "hub unmounted"),
        Err(e) => warn!(error = %e, "unmounting hub failed"),
    }
    let _ = std::fs::remove_dir(hub_dir);
}

/// SIGTERM and SIGINT.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, AppError> {
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(AppError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(AppError::Signals)?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
