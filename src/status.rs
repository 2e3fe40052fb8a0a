//! `baofs status`: what a running driver serves, for operators debugging a node.
//!
//! Every baofs process (`baofs mount`, `baofs csi`) listens on `<state-dir>/status-<pid>.sock`
//! (mode 0600). A client connects, the server writes one JSON document describing every volume
//! and closes. `baofs status` reads every such socket of the state directory, so it shows all
//! processes of the node, and says clearly when none is running. Nothing here ever contains a
//! secret value: only names, sizes, versions and times.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::publisher::Publisher;

/// Errors of the status socket and client.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Binding or preparing the socket failed.
    #[error("status socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No driver is running with this state directory.
    #[error(
        "no baofs process is running with state directory {0} (no live status-<pid>.sock in it)"
    )]
    NotRunning(PathBuf),
    /// A status document could not be read.
    #[error("reading status from {path}: {reason}")]
    Read {
        /// The socket path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// One object (no value).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectReport {
    /// `objectName`.
    pub name: String,
    /// Content generation: 1 at publish, +1 per change.
    pub generation: u32,
    /// The provider's opaque version (as in SecretProviderClassPodStatus).
    pub version: String,
    /// Size in bytes.
    pub size: usize,
    /// When this version was fetched (RFC 3339, UTC).
    pub fetched_at: String,
}

/// One volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeReport {
    /// Volume id.
    pub volume_id: String,
    /// Mount target.
    pub target: String,
    /// `namespace/name` of the SecretProviderClass.
    pub spc: String,
    /// Pod namespace, if known.
    pub pod_namespace: Option<String>,
    /// Pod name, if known.
    pub pod_name: Option<String>,
    /// Pod uid, if known.
    pub pod_uid: Option<String>,
    /// When it was published (RFC 3339).
    pub published_at: String,
    /// Last successful refresh (RFC 3339).
    pub last_refresh: Option<String>,
    /// Last error, if the latest poll failed (never contains a value).
    pub last_error: Option<String>,
    /// Objects.
    pub objects: Vec<ObjectReport>,
}

/// What one process serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessReport {
    /// Process id.
    pub pid: u32,
    /// baofs version.
    pub version: String,
    /// The FUSE hub mount point.
    pub hub: String,
    /// The holder socket this process hands its hub to (restart survival), if any.
    #[serde(default)]
    pub holder: Option<String>,
    /// How it started: `fresh`, or what it took over from a previous process.
    #[serde(default)]
    pub started: String,
    /// Volumes, sorted by target.
    pub volumes: Vec<VolumeReport>,
}

pub use crate::timefmt::rfc3339;

/// The report of this process.
pub fn report(publisher: &Publisher) -> ProcessReport {
    ProcessReport {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        hub: publisher.hub_dir().display().to_string(),
        holder: publisher.holder_socket().map(|p| p.display().to_string()),
        started: publisher.origin(),
        volumes: publisher
            .status()
            .into_iter()
            .map(|v| VolumeReport {
                volume_id: v.volume_id,
                target: v.target.display().to_string(),
                spc: v.spc,
                pod_namespace: v.pod.namespace,
                pod_name: v.pod.name,
                pod_uid: v.pod.uid,
                published_at: rfc3339(v.published_at),
                last_refresh: v.health.last_success.map(rfc3339),
                last_error: v.health.last_error,
                objects: v
                    .objects
                    .into_iter()
                    .map(|o| ObjectReport {
                        name: o.name,
                        generation: o.generation,
                        version: o.version,
                        size: o.size,
                        fetched_at: rfc3339(o.fetched_at),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The status socket of this process in `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(format!("status-{}.sock", std::process::id()))
}

/// Serves status on `<state_dir>/status-<pid>.sock` until the returned task is aborted.
pub fn serve(
    state_dir: &Path,
    publisher: Arc<Publisher>,
) -> Result<tokio::task::JoinHandle<()>, StatusError> {
    let path = socket_path(state_dir);
    let err = |source| StatusError::Socket {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(err)?;
    clean_stale_sockets(state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(err)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let doc = serde_json::to_vec(&report(&publisher)).unwrap_or_default();
            tokio::spawn(async move {
                if let Err(e) = stream.write_all(&doc).await {
                    debug!(error = %e, "status client went away");
                }
                let _ = stream.shutdown().await;
            });
        }
    }))
}

fn pid_of_socket(name: &str) -> Option<u32> {
    name.strip_prefix("status-")?
        .strip_suffix(".sock")?
        .parse()
        .ok()
}

/// Removes status sockets of processes that are gone.
fn clean_stale_sockets(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(pid) = name.to_str().and_then(pid_of_socket)
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes this process's status socket (shutdown).
pub fn remove_socket(state_dir: &Path) {
    let _ = std::fs::remove_file(socket_path(state_dir));
}

/// Reads the reports of every baofs process using `state_dir`.
pub async fn collect(state_dir: &Path) -> Result<Vec<ProcessReport>, StatusError> {
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(state_dir)
        .map_err(|_| StatusError::NotRunning(state_dir.to_owned()))?
        .flatten()
        .filter(|e| e.file_name().to_str().and_then(pid_of_socket).is_some())
        .map(|e| e.path())
        .collect();
    sockets.sort();
    let mut reports = Vec::new();
    for path in sockets {
        let mut stream = match UnixStream::connect(&path).await {
            Ok(s) => s,
            Err(e) => {
                warn!(socket = %path.display(), error = %e, "stale status socket");
                continue;
            }
        };
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(StatusError::Read {
                    path,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(StatusError::Read {
                    path,
                    reason: "timed out".into(),
                });
            }
        }
        let report = serde_json::from_slice(&buf).map_err(|e| StatusError::Read {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        reports.push(report);
    }
    if reports.is_empty() {
        return Err(StatusError::NotRunning(state_dir.to_owned()));
    }
    Ok(reports)
}

/// Human-readable rendering of `reports`.
pub fn render(reports: &[ProcessReport]) -> String {
    let mut out = String::new();
    for p in reports {
        out.push_str(&format!(
            "baofs {} pid {} hub {}: {} volume(s)\n",
            p.version,
            p.pid,
            p.hub,
            p.volumes.len()
        ));
        out.push_str(&format!(
            "  started: {}  holder: {}\n",
            if p.started.is_empty() {
                "-"
            } else {
                &p.started
            },
            p.holder
                .as_deref()
                .unwrap_or("none (volumes do not survive a restart of this process)")
        ));
        for v in &p.volumes {
            let pod = match (&v.pod_namespace, &v.pod_name) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                (Some(ns), None) => format!("{ns}/-"),
                _ => "-".into(),
            };
            out.push_str(&format!(
                "  {}\n    volume {}  spc {}  pod {} (uid {})\n    published {}  last refresh {}\n",
                v.target,
                v.volume_id,
                v.spc,
                pod,
                v.pod_uid.as_deref().unwrap_or("-"),
                v.published_at,
                v.last_refresh.as_deref().unwrap_or("-"),
            ));
            if let Some(e) = &v.last_error {
                out.push_str(&format!("    LAST ERROR: {e}\n"));
            }
            for o in &v.objects {
                out.push_str(&format!(
                    "    - {}  version {} (generation {})  {} bytes  fetched {}\n",
                    o.name, o.version, o.generation, o.size, o.fetched_at
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names() {
        assert_eq!(pid_of_socket("status-42.sock"), Some(42));
        assert_eq!(pid_of_socket("status-x.sock"), None);
        assert_eq!(pid_of_socket("hub-42"), None);
    }

    #[test]
    fn render_shows_names_not_values() {
        let r = ProcessReport {
            pid: 1,
            version: "0.1.0".into(),
            hub: "/run/baofs/hub-1".into(),
            holder: Some("/run/baofs/holder.sock".into()),
            started: "took over 1 volumes (1 with values) at 2026-12-03T00:00:00Z".into(),
            volumes: vec![VolumeReport {
                volume_id: "v".into(),
                target: "/mnt/x".into(),
                spc: "ns/spc".into(),
                pod_namespace: Some("ns".into()),
                pod_name: Some("p".into()),
                pod_uid: None,
                published_at: "t0".into(),
                last_refresh: Some("t1".into()),
                last_error: Some("read secret/data/x: HTTP 503".into()),
                objects: vec![ObjectReport {
                    name: "password".into(),
                    generation: 3,
                    version: "v3-abc".into(),
                    size: 12,
                    fetched_at: "t1".into(),
                }],
            }],
        };
        let text = render(&[r]);
        assert!(text.contains("/mnt/x"));
        assert!(text.contains("password  version v3-abc (generation 3)  12 bytes"));
        assert!(text.contains("LAST ERROR: read secret/data/x: HTTP 503"));
        assert!(text.contains("pod ns/p"));
        assert!(text.contains("started: took over 1 volumes"));
        assert!(text.contains("holder: /run/baofs/holder.sock"));
    }
}
