//! Composition root of `baofs mount`: one volume, no Kubernetes, the same stages the CSI
//! driver uses.
//!
//! ```text
//! SPC file + token ─> volume spec ─> provider (OpenBao) ─> cache ─> hub (FUSE) ─> bind at target
//!                                        ^                                  |
//!                                      poller ─> cache swap ─> invalidation ┘
//! ```
//!
//! `baofs mount` is a one-volume client of `publisher`, the use case CSI NodePublishVolume
//! calls: every object is fetched before the target is mounted, and a failure leaves nothing
//! mounted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::cli::{MountArgs, StatusArgs};
use crate::provider::{OpenBaoProvider, Provider, ProviderError};
use crate::publisher::{PublishError, Publisher, PublisherConfig};
use crate::secret::SecretString;
use crate::spc::{SecretProviderClass, SpcError};
use crate::status::{self, StatusError};
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
    /// Creating the provider failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Publishing failed (target, fetch, mount); nothing was left mounted.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// `baofs status` could not read the driver's status.
    #[error(transparent)]
    Status(#[from] StatusError),
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

/// Runs `baofs mount` until SIGTERM or SIGINT.
pub async fn run_mount(args: MountArgs) -> Result<(), AppError> {
    for w in crate::hardening::harden_process() {
        warn!("{w}");
    }
    // Every input is checked before anything is fetched or mounted.
    let spec = volume_spec(&args)?;
    let provider: Arc<dyn Provider> = Arc::new(OpenBaoProvider::new(args.openbao.config())?);
    let mut signals = Signals::install()?;
    let publisher = Publisher::start(
        PublisherConfig {
            state_dir: args.state_dir.clone(),
            rotation: Some(args.rotation_poll_interval),
            fuse_threads: FUSE_THREADS,
            create_missing_targets: false,
        },
        provider,
        Arc::new(crate::observer::NoObserver),
    )?;
    // The same use case as CSI NodePublishVolume: nothing is left mounted if it fails.
    let published = tokio::select! {
        r = publisher.publish(spec, &args.target) => r.map(Some),
        _ = signals.recv() => Ok(None),
    };
    match published {
        Ok(Some(_)) => {}
        Ok(None) => {
            info!("interrupted before the volume was mounted");
            publisher.shutdown().await;
            return Ok(());
        }
        Err(e) => {
            publisher.shutdown().await;
            return Err(e.into());
        }
    }
    let status = match status::serve(&args.state_dir, Arc::clone(&publisher)) {
        Ok(task) => Some(task),
        Err(e) => {
            warn!(error = %e, "baofs status will not see this process");
            None
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "baofs: mounted {}", args.target.display());
        let _ = out.flush();
    }
    signals.recv().await;
    info!("signal received: unmounting");
    if let Some(task) = status {
        task.abort();
        status::remove_socket(&args.state_dir);
    }
    publisher.shutdown().await;
    Ok(())
}

/// Runs `baofs status`: prints what every baofs process of this state directory serves.
pub async fn run_status(args: StatusArgs) -> Result<(), AppError> {
    let reports = status::collect(&args.state_dir).await?;
    let mut out = std::io::stdout().lock();
    let text = if args.json {
        serde_json::to_string_pretty(&reports).unwrap_or_default() + "\n"
    } else {
        status::render(&reports)
    };
    let _ = out.write_all(text.as_bytes());
    Ok(())
}

/// SIGTERM and SIGINT.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn install() -> Result<Self, AppError> {
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(AppError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(AppError::Signals)?,
        })
    }

    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
