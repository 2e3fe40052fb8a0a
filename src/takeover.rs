//! The takeover stage: how a `baofs csi` process hands its mounts to the next one.
//!
//! ```text
//! publish / unpublish / rotation ─> Checkpointer ─> holder: "hub" = /dev/fuse fd + Checkpoint (no secrets)
//!                                                          "credentials" = memfd_secret (tokens, version key)
//! start: holder ─> Checkpoint + fd ─> refetch every volume ─> cache (same slots, same generations)
//!        ─> adopt the fd (no INIT) ─> FUSE_NOTIFY_RESEND ─> serve; then CSI, status, pollers
//! ```
//!
//! A FUSE mount lives as long as one open file description of its `/dev/fuse` connection does.
//! `baofs holder` keeps one, so a crashed or upgraded driver leaves every mount alive: reads
//! block in the kernel until a successor serves the connection again. The successor needs to
//! know what the connection serves; that is the `Checkpoint`: per volume its slot (the top bits
//! of every inode number), target, SPC manifest, pod, and per file the generation (the low bits)
//! and version id. Values are never in it: the successor refetches them with the credentials
//! handed over in `memfd_secret` memory (`secretmem`), and, because version ids are keyed with
//! the same key, knows which files are unchanged and keeps their inode numbers, so the
//! kernel's cached nodeids and pages stay valid.
//!
//! Planned upgrades: a successor that finds a live owner waits on the owner's handoff socket
//! ("standby") and prefetches; when the owner gets SIGTERM it stops its pollers and CSI
//! operations, writes a final checkpoint, answers "released" and exits without unmounting. The
//! successor then serves at once; reads are blocked only for that gap, which it measures.
//!
//! Nothing here holds a lock the read path takes.

pub mod secretmem;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::cache::PriorVersion;
use crate::fuse::raw::ConnState;
use crate::holder::{self, HolderError};
use crate::provider::FetchedObject;
use crate::provider::ProviderError;
use crate::provider::openbao::version::KEY_BYTES;
use crate::secret::SecretString;
use crate::spc::SecretProviderClass;
use crate::volume::{Credentials, Ownership, PodInfo, VolumeSpec};

/// Holder entry of the FUSE connection; its meta is the `Checkpoint`.
pub const HUB_ENTRY: &str = "hub";
/// Holder entry of the credentials region (`secretmem`).
pub const CREDENTIALS_ENTRY: &str = "credentials";
/// Checkpoint format this build writes and reads.
pub const FORMAT: u32 = 1;
/// How long a publish or unpublish waits for its checkpoint to reach the holder.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest delay of a checkpoint that only carries fresh credentials (republish); also how
/// often the holder is checked for our hub (a restarted holder gets it again).
const LAZY_DELAY: Duration = Duration::from_secs(2);
/// The owner's handoff socket in the state directory.
pub fn handoff_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("handoff.sock")
}

/// Errors of the takeover stage. None contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// Talking to the holder failed.
    #[error(transparent)]
    Holder(#[from] HolderError),
    /// The holder's checkpoint cannot be used.
    #[error("checkpoint in the holder ({socket}): {reason}")]
    Checkpoint {
        /// The holder socket.
        socket: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The handoff with the running driver failed.
    #[error("handoff via {socket}: {reason}")]
    Handoff {
        /// The owner's handoff socket.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// One file of a checkpointed volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    /// Node index in the volume's layout.
    pub node: u16,
    /// Generation served (the inode's low bits).
    pub generation: u32,
    /// Version id (keyed hash; reveals nothing).
    pub version: String,
    /// When it was fetched (the file's mtime).
    pub fetched_at: SystemTime,
}

/// Pod of a checkpointed volume.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodRecord {
    /// Pod name.
    pub name: Option<String>,
    /// Pod namespace.
    pub namespace: Option<String>,
    /// Pod uid.
    pub uid: Option<String>,
    /// Service account.
    pub service_account: Option<String>,
}

/// Which kind of credential the volume logs in with (the credential itself is in `secretmem`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// A service-account JWT (login at the SPC's auth mount).
    Jwt,
    /// An OpenBao token.
    Token,
}

/// One volume of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    /// Its directory in the hub (`<ns>_<spc>_<volume id>`).
    pub name: String,
    /// Its slot: the top bits of every inode number of the volume.
    pub slot: u32,
    /// CSI volume id.
    pub volume_id: String,
    /// Mount target.
    pub target: PathBuf,
    /// Whether the driver created the target directory.
    pub created_target: bool,
    /// Directory times.
    pub created_at: SystemTime,
    /// When it was published.
    pub published_at: SystemTime,
    /// Index into `Checkpoint::manifests`.
    pub manifest: usize,
    /// The SPC's namespace as resolved at publish.
    pub spc_namespace: Option<String>,
    /// The pod.
    pub pod: PodRecord,
    /// File owner.
    pub uid: u32,
    /// File group.
    pub gid: u32,
    /// Credential kind.
    pub credential: CredentialKind,
    /// Files, by node.
    pub files: Vec<FileRecord>,
}

/// What a driver process serves, without any value or credential: the holder's meta for the
/// FUSE connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// `FORMAT`.
    pub format: u32,
    /// baofs version that wrote it.
    pub writer: String,
    /// Where the hub is mounted.
    pub hub_dir: PathBuf,
    /// The connection's negotiated INIT.
    pub conn: ConnState,
    /// The owner's handoff socket.
    pub handoff_socket: PathBuf,
    /// SPC manifests, deduplicated (volumes of one SPC share one).
    pub manifests: Vec<String>,
    /// Every volume.
    pub volumes: Vec<VolumeRecord>,
}

/// The credentials of a checkpoint (only ever in `secretmem` memory and zeroizing buffers).
pub struct Secrets {
    /// The provider's version key.
    pub version_key: Option<Zeroizing<[u8; KEY_BYTES]>>,
    /// Credential per volume (by hub name).
    pub credentials: Vec<(String, Credentials)>,
    /// The provider's login-token cache (`OpenBaoProvider::export_logins`), so a successor
    /// reads without logging in again.
    pub logins: Option<Zeroizing<Vec<u8>>>,
    /// The provider's dynamic secrets (`OpenBaoProvider::export_leases`), so a successor
    /// renews them instead of issuing new credentials to every pod.
    pub leases: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field(
                "version_key",
                &self.version_key.as_ref().map(|_| "<redacted>"),
            )
            .field("credentials", &self.credentials.len())
            .field("logins", &self.logins.as_ref().map(|_| "<redacted>"))
            .field("leases", &self.leases.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

const SECRETS_MAGIC: &[u8] = b"baofs-credentials 1\n";
/// The line after which the provider's login export runs to the end of the credentials.
const LOGINS_MARK: &[u8] = b"logins";
/// `leases <n>`: the line before the provider's lease export (`n` bytes, then a newline).
const LEASES_MARK: &[u8] = b"leases ";

impl Secrets {
    /// Serializes into one zeroizing buffer of exactly the right capacity (no reallocation
    /// leaves copies): magic, `key <hex>`, then `<name>\t<j|t>\t<credential>` lines, then
    /// `leases <n>` and the provider's lease export of `n` bytes and a newline, then a `logins`
    /// line followed by the provider's login export up to the end.
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let cred = |c: &Credentials| match c {
            Credentials::Jwt(s) => (b'j', s.expose().len()),
            Credentials::Token(s) => (b't', s.expose().len()),
        };
        let len = SECRETS_MAGIC.len()
            + self
                .version_key
                .as_ref()
                .map_or(0, |_| 4 + KEY_BYTES * 2 + 1)
            + self
                .credentials
                .iter()
                .map(|(n, c)| n.len() + 3 + cred(c).1 + 1)
                .sum::<usize>()
            + self.leases.as_ref().map_or(0, |l| {
                LEASES_MARK.len() + l.len().to_string().len() + 1 + l.len() + 1
            })
            + self
                .logins
                .as_ref()
                .map_or(0, |l| LOGINS_MARK.len() + 1 + l.len());
        let mut out = Zeroizing::new(Vec::with_capacity(len));
        out.extend_from_slice(SECRETS_MAGIC);
        if let Some(key) = &self.version_key {
            out.extend_from_slice(b"key ");
            for b in key.iter() {
                out.extend_from_slice(&hex_byte(*b));
            }
            out.push(b'\n');
        }
        for (name, c) in &self.credentials {
            let secret = match c {
                Credentials::Jwt(s) | Credentials::Token(s) => s.expose(),
            };
            // Names are [A-Za-z0-9._-]; credentials are tokens: neither contains \t or \n.
            if secret.contains(['\t', '\n']) {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.push(b'\t');
            out.push(cred(c).0);
            out.push(b'\t');
            out.extend_from_slice(secret.as_bytes());
            out.push(b'\n');
        }
        if let Some(leases) = &self.leases {
            out.extend_from_slice(LEASES_MARK);
            out.extend_from_slice(leases.len().to_string().as_bytes());
            out.push(b'\n');
            out.extend_from_slice(leases);
            out.push(b'\n');
        }
        if let Some(logins) = &self.logins {
            out.extend_from_slice(LOGINS_MARK);
            out.push(b'\n');
            out.extend_from_slice(logins);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(SECRETS_MAGIC)?;
        let mut version_key = None;
        let mut credentials = Vec::new();
        let mut logins = None;
        let mut leases = None;
        let mut rest = rest;
        while !rest.is_empty() {
            let end = rest.iter().position(|&b| b == b'\n')?;
            let line = &rest[..end];
            rest = &rest[end + 1..];
            if line == LOGINS_MARK {
                let mut l = Zeroizing::new(Vec::with_capacity(rest.len()));
                l.extend_from_slice(rest);
                logins = Some(l);
                break;
            }
            if line.is_empty() {
                continue;
            }
            if let Some(n) = line.strip_prefix(LEASES_MARK) {
                let n: usize = std::str::from_utf8(n).ok()?.parse().ok()?;
                if rest.len() < n + 1 || rest[n] != b'\n' {
                    return None;
                }
                let mut l = Zeroizing::new(Vec::with_capacity(n));
                l.extend_from_slice(&rest[..n]);
                leases = Some(l);
                rest = &rest[n + 1..];
                continue;
            }
            if let Some(hex) = line.strip_prefix(b"key ") {
                let mut key = Zeroizing::new([0u8; KEY_BYTES]);
                if hex.len() != KEY_BYTES * 2 {
                    return None;
                }
                for (i, pair) in hex.chunks(2).enumerate() {
                    key[i] = (unhex(pair[0])? << 4) | unhex(pair[1])?;
                }
                version_key = Some(key);
                continue;
            }
            let mut parts = line.splitn(3, |&b| b == b'\t');
            let (Some(name), Some(kind), Some(secret)) = (parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            let name = std::str::from_utf8(name).ok()?.to_owned();
            let secret = SecretString::new(std::str::from_utf8(secret).ok()?.to_owned());
            let c = match kind {
                b"j" => Credentials::Jwt(secret),
                b"t" => Credentials::Token(secret),
                _ => return None,
            };
            credentials.push((name, c));
        }
        Some(Self {
            version_key,
            credentials,
            logins,
            leases,
        })
    }
}

fn hex_byte(b: u8) -> [u8; 2] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]
}

fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// What the holder keeps for a live hub, fetched by a starting driver.
pub struct Held {
    /// The holder socket.
    pub socket: PathBuf,
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The connection (same open file description the holder keeps).
    pub fd: OwnedFd,
    /// Credentials and version key, when they were handed over.
    pub secrets: Option<Secrets>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("socket", &self.socket)
            .field("volumes", &self.checkpoint.volumes.len())
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

/// Whether a holder listens in `state_dir`.
pub fn holder_available(state_dir: &Path) -> bool {
    UnixStream::connect(holder::socket_path(state_dir)).is_ok()
}

/// Fetches the hub the holder keeps, if any. `Ok(None)`: no holder, or it holds no hub.
pub fn fetch(state_dir: &Path) -> Result<Option<Held>, TakeoverError> {
    let socket = holder::socket_path(state_dir);
    if !holder_available(state_dir) {
        return Ok(None);
    }
    if !holder::list(&socket)?.iter().any(|n| n == HUB_ENTRY) {
        return Ok(None);
    }
    let (meta, fd) = holder::get_raw(&socket, HUB_ENTRY)?;
    let bad = |reason: String| TakeoverError::Checkpoint {
        socket: socket.clone(),
        reason,
    };
    let meta = meta.ok_or_else(|| bad("the hub has no checkpoint".into()))?;
    // Straight from the text (no JSON tree): this runs inside a handoff's gap.
    let checkpoint: Checkpoint =
        serde_json::from_str(meta.get()).map_err(|e| bad(format!("unreadable: {e}")))?;
    if checkpoint.format != FORMAT {
        return Err(bad(format!(
            "format {} written by baofs {}; this build reads format {FORMAT}",
            checkpoint.format, checkpoint.writer
        )));
    }
    if !checkpoint.conn.is_initialized() {
        return Err(bad("the connection was never initialized".into()));
    }
    let secrets = match holder::get(&socket, CREDENTIALS_ENTRY) {
        Ok((_, memfd)) => match secretmem::open(&memfd) {
            Ok(bytes) => Secrets::decode(&bytes),
            Err(e) => {
                warn!(error = %e, "the handed-over credentials cannot be read");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "no credentials were handed over");
            None
        }
    };
    Ok(Some(Held {
        socket,
        checkpoint,
        fd,
        secrets,
    }))
}

/// Tells the holder to close a hub no process can take over (its mounts then answer ENOTCONN
/// and are cleaned like a dead process's).
pub fn abandon(state_dir: &Path) {
    let socket = holder::socket_path(state_dir);
    for name in [HUB_ENTRY, CREDENTIALS_ENTRY] {
        if let Err(e) = holder::drop_fd(&socket, name) {
            debug!(error = %e, name, "holder drop");
        }
    }
}

/// The last checkpoint, also kept as a file in the state directory (it holds no value and no
/// credential): if the holder dies too, the next start still knows which pods lost a volume.
pub fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join("checkpoint.json")
}

fn save_record(state_dir: &Path, meta: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = record_path(state_dir);
    let tmp = state_dir.join(".checkpoint.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // One write (serde_json writing to a bare File made a syscall per token: 80 ms per
    // checkpoint of 300 volumes, measured).
    f.write_all(meta)?;
    std::fs::rename(&tmp, &path)
}

/// The pods of `targets`, from the last checkpoint record (removed afterwards: it described
/// a connection that is gone).
pub fn lost_pods(state_dir: &Path, targets: &[PathBuf]) -> Vec<(PathBuf, PodInfo)> {
    let path = record_path(state_dir);
    let Ok(text) = std::fs::read(&path) else {
        return Vec::new();
    };
    let _ = std::fs::remove_file(&path);
    let Ok(checkpoint) = serde_json::from_slice::<Checkpoint>(&text) else {
        return Vec::new();
    };
    targets
        .iter()
        .filter_map(|t| {
            let v = checkpoint.volumes.iter().find(|v| &v.target == t)?;
            Some((
                t.clone(),
                PodInfo {
                    name: v.pod.name.clone(),
                    namespace: v.pod.namespace.clone(),
                    uid: v.pod.uid.clone(),
                    service_account: v.pod.service_account.clone(),
                },
            ))
        })
        .collect()
}

/// One volume to restore, as the checkpoint describes it.
#[derive(Debug)]
pub struct RestoredVolume {
    /// The record.
    pub record: VolumeRecord,
    /// The spec rebuilt from it (credentials from the handed-over secrets, if any).
    pub spec: Result<VolumeSpec, String>,
    /// Prior versions for `SecretCache::restore`.
    pub prior: Vec<PriorVersion>,
    /// The refetched values (or why not).
    pub fetched: Option<Result<Vec<FetchedObject>, ProviderError>>,
    /// Why nothing can be fetched yet (no credential was handed over).
    pub pending: Option<String>,
}

/// Rebuilds the volume specs of `held`.
pub fn restored_volumes(checkpoint: &Checkpoint, secrets: Option<&Secrets>) -> Vec<RestoredVolume> {
    // Each SPC is parsed once, not once per volume, and credentials are looked up by name:
    // this runs inside a handoff's gap (1000 volumes of 100 SPCs: 82 ms before, measured).
    let spcs: Vec<Result<SecretProviderClass, String>> = checkpoint
        .manifests
        .iter()
        .map(|m| {
            SecretProviderClass::from_yaml(m)
                .map_err(|e| format!("SecretProviderClass no longer parses: {e}"))
        })
        .collect();
    let by_name: HashMap<&str, &Credentials> = secrets
        .map(|s| s.credentials.iter().map(|(n, c)| (n.as_str(), c)).collect())
        .unwrap_or_default();
    checkpoint
        .volumes
        .iter()
        .map(|r| {
            let spec = (|| {
                let mut spc = spcs
                    .get(r.manifest)
                    .ok_or_else(|| format!("manifest {} missing", r.manifest))?
                    .clone()?;
                spc.namespace.clone_from(&r.spc_namespace);
                let credentials = by_name.get(r.name.as_str()).map(|c| (*c).clone());
                Ok::<_, String>(VolumeSpec {
                    id: r.volume_id.clone(),
                    spc,
                    pod: PodInfo {
                        name: r.pod.name.clone(),
                        namespace: r.pod.namespace.clone(),
                        uid: r.pod.uid.clone(),
                        service_account: r.pod.service_account.clone(),
                    },
                    credentials: credentials
                        .clone()
                        .unwrap_or_else(|| Credentials::Jwt(SecretString::new(String::new()))),
                    ownership: Ownership {
                        uid: r.uid,
                        gid: r.gid,
                    },
                })
                .map(|spec| (spec, credentials.is_some()))
            })();
            let (spec, pending) = match spec {
                Ok((spec, true)) => (Ok(spec), None),
                Ok((spec, false)) => (
                    Ok(spec),
                    Some(
                        "no credential was handed over; the next NodePublishVolume brings one"
                            .to_owned(),
                    ),
                ),
                Err(e) => (Err(e), None),
            };
            let prior = r
                .files
                .iter()
                .map(|f| PriorVersion {
                    node: f.node,
                    generation: f.generation,
                    id: f.version.clone(),
                    fetched_at: f.fetched_at,
                })
                .collect();
            RestoredVolume {
                record: r.clone(),
                spec,
                prior,
                fetched: None,
                pending,
            }
        })
        .collect()
}

/// Fetches the values of every restorable volume that has a credential, at most `parallel`
/// at a time, skipping those that already have values.
pub async fn prefetch(
    provider: &Arc<dyn crate::provider::Provider>,
    volumes: &mut [RestoredVolume],
    parallel: usize,
) {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, v) in volumes.iter().enumerate() {
        if v.fetched.is_some() || v.pending.is_some() {
            continue;
        }
        let Ok(spec) = &v.spec else { continue };
        let (spec, provider, semaphore) =
            (spec.clone(), Arc::clone(provider), Arc::clone(&semaphore));
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            (i, provider.fetch(&spec).await)
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, result)) = done
            && let Some(v) = volumes.get_mut(i)
        {
            v.fetched = Some(result);
        }
    }
}

/// Moves values fetched for `from` (an earlier checkpoint) to the same volumes of `into` (the
/// final one), when the volume is the same (name, SPC manifest and credential kind).
pub fn carry_over(
    from: Vec<RestoredVolume>,
    into: &mut [RestoredVolume],
    checkpoint_from: &Checkpoint,
    checkpoint_into: &Checkpoint,
) {
    let manifest = |c: &Checkpoint, r: &VolumeRecord| c.manifests.get(r.manifest).cloned();
    let mut by_name: std::collections::HashMap<String, RestoredVolume> = from
        .into_iter()
        .map(|v| (v.record.name.clone(), v))
        .collect();
    for v in into.iter_mut() {
        if let Some(old) = by_name.remove(&v.record.name)
            && old.record.slot == v.record.slot
            && old.record.credential == v.record.credential
            && manifest(checkpoint_from, &old.record) == manifest(checkpoint_into, &v.record)
            && matches!(old.fetched, Some(Ok(_)))
        {
            v.fetched = old.fetched;
        }
    }
}

/// What the provider hands a successor besides the volumes' credentials (all secret: it goes
/// into the `memfd_secret` region only).
pub trait Handover: Send + Sync {
    /// The key that makes version ids stable across processes.
    fn version_key(&self) -> Zeroizing<[u8; KEY_BYTES]>;
    /// The login-token cache, so the successor does not log every volume in again.
    fn logins(&self) -> Zeroizing<Vec<u8>>;
    /// The dynamic secrets, so the successor renews them instead of issuing new ones.
    fn leases(&self) -> Zeroizing<Vec<u8>>;
    /// Takes over a predecessor's `leases` (its final word replaces an earlier one); how many
    /// volumes were taken, `None` if unreadable.
    fn take_leases(&self, bytes: &[u8]) -> Option<usize>;
    /// Calls `f` whenever what `leases` returns has changed.
    fn on_change(&self, f: Box<dyn Fn() + Send + Sync>);
}

impl Handover for crate::provider::openbao::OpenBaoProvider {
    fn version_key(&self) -> Zeroizing<[u8; KEY_BYTES]> {
        Zeroizing::new(*crate::provider::openbao::OpenBaoProvider::version_key(
            self,
        ))
    }
    fn logins(&self) -> Zeroizing<Vec<u8>> {
        self.export_logins()
    }
    fn leases(&self) -> Zeroizing<Vec<u8>> {
        self.export_leases()
    }
    fn take_leases(&self, bytes: &[u8]) -> Option<usize> {
        self.import_leases(bytes)
    }
    fn on_change(&self, f: Box<dyn Fn() + Send + Sync>) {
        self.on_lease_change(f);
    }
}

/// What a checkpoint is built from (the publisher).
pub trait CheckpointSource: Send + Sync {
    /// The current state: checkpoint (no values) and credentials. `None` while shutting down.
    fn checkpoint(&self) -> Option<(Checkpoint, Secrets)>;
    /// A dup of the hub's connection fd.
    fn hub_fd(&self) -> Option<OwnedFd>;
}

/// Writes checkpoints to the holder: coalesced, off the caller's path, and confirmed to
/// publish/unpublish before they answer kubelet (a mount the checkpoint does not list could
/// not be taken over).
pub struct Checkpointer {
    socket: PathBuf,
    requested: watch::Sender<u64>,
    written: watch::Sender<u64>,
    lazy: AtomicBool,
    seq: AtomicU64,
    source: Mutex<Option<Weak<dyn CheckpointSource>>>,
    warned: AtomicBool,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// A checkpointer for the holder in `state_dir`; `start` makes it write.
    pub fn new(state_dir: &Path) -> Arc<Self> {
        Arc::new(Self {
            socket: holder::socket_path(state_dir),
            requested: watch::channel(0).0,
            written: watch::channel(0).0,
            lazy: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            source: Mutex::new(None),
            warned: AtomicBool::new(false),
        })
    }

    /// The holder socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Starts writing checkpoints of `source`, the first one at once.
    pub fn start(
        self: &Arc<Self>,
        source: Weak<dyn CheckpointSource>,
    ) -> tokio::task::JoinHandle<()> {
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
        let me = Arc::clone(self);
        self.mark();
        tokio::spawn(async move { me.run().await })
    }

    /// Asks for a checkpoint soon (a rotation changed generations) without waiting for it.
    pub fn mark(&self) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.requested.send_replace(seq);
    }

    /// Asks for a checkpoint within `LAZY_DELAY` (fresh credentials after a republish, a renewed
    /// lease; coalesced).
    pub fn mark_lazy(&self) {
        self.lazy.store(true, Ordering::SeqCst);
    }

    /// Asks for a checkpoint and waits until the holder has it (or `COMMIT_TIMEOUT`).
    pub async fn commit(&self) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.requested.send_replace(seq);
        let mut rx = self.written.subscribe();
        let done = tokio::time::timeout(COMMIT_TIMEOUT, rx.wait_for(|w| *w >= seq)).await;
        if !matches!(done, Ok(Ok(_))) {
            warn!(
                holder = %self.socket.display(),
                "the holder did not confirm the checkpoint within {COMMIT_TIMEOUT:?}: this change may not survive a driver restart"
            );
        }
    }

    /// Writes a checkpoint now, on this thread (the final one of a handoff).
    pub fn write_now(&self) -> Result<(), TakeoverError> {
        let target = self.seq.load(Ordering::SeqCst);
        self.write()?;
        self.written.send_replace(target);
        Ok(())
    }

    fn source(&self) -> Option<Arc<dyn CheckpointSource>> {
        self.source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Weak::upgrade)
    }

    /// Builds and puts one checkpoint: the credentials region first, then the hub, so a hub
    /// entry never names a volume whose credential is older than it.
    fn write(&self) -> Result<(), TakeoverError> {
        let Some(source) = self.source() else {
            return Ok(());
        };
        let started = Instant::now();
        let (Some((checkpoint, secrets)), Some(fd)) = (source.checkpoint(), source.hub_fd()) else {
            return Ok(());
        };
        drop(source);
        let bytes = secrets.encode();
        drop(secrets);
        match secretmem::seal(&bytes) {
            Ok(memfd) => holder::put(
                &self.socket,
                CREDENTIALS_ENTRY,
                &Box::default(),
                memfd.as_fd(),
            )?,
            Err(e) => {
                if !self.warned.swap(true, Ordering::SeqCst) {
                    warn!(
                        error = %e,
                        "memfd_secret is unavailable: credentials are not handed over; after a restart, volumes refresh at their next NodePublishVolume"
                    );
                }
            }
        }
        drop(bytes);
        // Serialized once, straight to text: the holder keeps it as is and the record is the
        // same bytes (no JSON tree is built on either side).
        let meta = serde_json::value::to_raw_value(&checkpoint).map_err(|e| {
            TakeoverError::Checkpoint {
                socket: self.socket.clone(),
                reason: e.to_string(),
            }
        })?;
        holder::put(&self.socket, HUB_ENTRY, &meta, fd.as_fd())?;
        let handed = started.elapsed();
        if let Some(dir) = self.socket.parent()
            && let Err(e) = save_record(dir, meta.get().as_bytes())
        {
            debug!(error = %e, "checkpoint record not saved");
        }
        debug!(
            volumes = checkpoint.volumes.len(),
            bytes = meta.get().len(),
            handed_ms = handed.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "checkpoint handed to the holder"
        );
        Ok(())
    }

    /// Whether the holder still keeps our hub (it may have been restarted: then it has
    /// nothing, and the next driver restart would lose the mounts).
    fn holder_has_hub(&self) -> bool {
        holder::list(&self.socket).is_ok_and(|names| names.iter().any(|n| n == HUB_ENTRY))
    }

    async fn run(self: Arc<Self>) {
        let mut requested = self.requested.subscribe();
        let mut backoff = Duration::from_millis(100);
        let mut tick = tokio::time::interval(LAZY_DELAY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let written = *self.written.borrow();
            let wanted = *requested.borrow_and_update();
            if wanted <= written {
                tokio::select! {
                    changed = requested.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                    _ = tick.tick() => {
                        // Fresh credentials to hand over, or a holder that lost our hub.
                        if !self.lazy.load(Ordering::SeqCst) {
                            let me = Arc::clone(&self);
                            let has = tokio::task::spawn_blocking(move || me.holder_has_hub())
                                .await
                                .unwrap_or(true);
                            if has {
                                continue;
                            }
                            warn!(
                                holder = %self.socket.display(),
                                "the holder does not keep this driver's hub (was it restarted?): handing it over again"
                            );
                        }
                    }
                }
            }
            self.lazy.store(false, Ordering::SeqCst);
            let target = self.seq.load(Ordering::SeqCst);
            let me = Arc::clone(&self);
            let result = tokio::task::spawn_blocking(move || me.write()).await;
            match result {
                Ok(Ok(())) => {
                    self.written.send_replace(target);
                    backoff = Duration::from_millis(100);
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "checkpoint not written; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    warn!(error = %e, "checkpoint task failed");
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handoff between a running owner and its successor (planned upgrades).

/// Successor side: the running owner answered on its handoff socket; we are its standby.
#[derive(Debug)]
pub struct Standby {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
}

/// How the owner let go.
#[derive(Debug, Clone, Copy)]
pub enum Released {
    /// It wrote a final checkpoint and exited; reads were blocked from `at` on.
    Handed {
        /// When the owner stopped (its process ended).
        at: Instant,
    },
    /// It died without a final checkpoint (the holder keeps the last one).
    Died,
}

impl Standby {
    /// Registers as standby with the owner at `socket`, if one answers there.
    pub fn connect(socket: &Path) -> Option<Self> {
        let mut stream = UnixStream::connect(socket).ok()?;
        stream.write_all(b"standby\n").ok()?;
        Some(Self {
            socket: socket.to_owned(),
            reader: BufReader::new(stream),
        })
    }

    /// Tells the owner we are ready (values prefetched): from now on its SIGTERM hands over.
    pub fn ready(&mut self) -> Result<(), TakeoverError> {
        self.reader
            .get_mut()
            .write_all(b"ready\n")
            .map_err(|e| TakeoverError::Handoff {
                socket: self.socket.clone(),
                reason: e.to_string(),
            })
    }

    /// Waits (blocking) until the owner releases the hub on SIGTERM, or dies.
    pub fn wait_release(mut self) -> Result<Released, TakeoverError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(_) if line.trim() == "released" => {
                // The owner exits right after answering: wait for its end of the socket to
                // close, which is when its FUSE loops are gone too.
                let mut rest = String::new();
                let _ = self.reader.read_line(&mut rest);
                Ok(Released::Handed { at: Instant::now() })
            }
            Ok(_) => Ok(Released::Died),
            Err(e) => {
                debug!(error = %e, "handoff socket read");
                Ok(Released::Died)
            }
        }
    }
}

/// Owner side: the successors that registered, and the one that is ready (the newest wins).
#[derive(Debug, Default)]
pub struct StandbyState {
    /// Registered, still prefetching.
    preparing: usize,
    /// Ready to take over.
    ready: Option<UnixStream>,
}

/// Shared between the handoff socket and the shutdown path.
pub type StandbySlot = Arc<Mutex<StandbyState>>;

/// Owner side, at SIGTERM: the ready successor, waiting up to `patience` for one that is
/// still prefetching.
pub async fn take_standby(slot: &StandbySlot, patience: Duration) -> Option<UnixStream> {
    let deadline = Instant::now() + patience;
    loop {
        {
            let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
            if s.preparing == 0 || Instant::now() >= deadline {
                return s.ready.take();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Accepts standby successors on `<state_dir>/handoff.sock` (0600) into `slot` until the task
/// is aborted.
pub fn serve_handoff(
    state_dir: &Path,
    slot: StandbySlot,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let path = handoff_socket(state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(stream) = stream.into_std() else {
                continue;
            };
            let slot = Arc::clone(&slot);
            tokio::task::spawn_blocking(move || {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(600)));
                let Ok(clone) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(clone);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.trim() != "standby" {
                    return;
                }
                info!("a successor registered; it takes over on SIGTERM once it is ready");
                slot.lock().unwrap_or_else(|e| e.into_inner()).preparing += 1;
                line.clear();
                let ready = reader.read_line(&mut line).is_ok() && line.trim() == "ready";
                let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
                s.preparing -= 1;
                if ready {
                    info!("a successor is ready to take over on SIGTERM");
                    s.ready = Some(stream);
                }
            });
        }
    }))
}

/// Owner side, after the final checkpoint: tells the standby it may take over. The caller
/// exits right after (closing the socket is the successor's signal that we are gone).
pub fn release(standby: &mut UnixStream) -> std::io::Result<()> {
    standby.write_all(b"released\n")?;
    standby.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_without_debug_leaks() {
        let s = Secrets {
            version_key: Some(Zeroizing::new([7u8; KEY_BYTES])),
            credentials: vec![
                (
                    "ns_spc_vol-1".into(),
                    Credentials::Jwt(SecretString::new("eyJ.a.b".into())),
                ),
                (
                    "ns_spc_vol-2".into(),
                    Credentials::Token(SecretString::new("s.tok".into())),
                ),
            ],
            // Binary, with newlines and tabs in it.
            logins: Some(Zeroizing::new(b"baofs-logins\n\t\0s.login\n".to_vec())),
            // Binary too, ending in a newline, and mentioning the logins mark.
            leases: Some(Zeroizing::new(
                b"baofs-leases\nlogins\n\0lease-id\n".to_vec(),
            )),
        };
        let bytes = s.encode();
        assert_eq!(
            bytes.len(),
            bytes.capacity(),
            "exact capacity: no reallocation"
        );
        let back = Secrets::decode(&bytes).expect("decodes");
        assert_eq!(back.version_key.as_deref(), Some(&[7u8; KEY_BYTES]));
        assert_eq!(back.credentials.len(), 2);
        assert!(matches!(&back.credentials[0].1, Credentials::Jwt(t) if t.expose() == "eyJ.a.b"));
        assert!(matches!(&back.credentials[1].1, Credentials::Token(t) if t.expose() == "s.tok"));
        assert_eq!(
            back.logins.as_deref().map(Vec::as_slice),
            Some(&b"baofs-logins\n\t\0s.login\n"[..])
        );
        assert_eq!(
            back.leases.as_deref().map(Vec::as_slice),
            Some(&b"baofs-leases\nlogins\n\0lease-id\n"[..])
        );
        let dbg = format!("{back:?}");
        assert!(
            !dbg.contains("eyJ")
                && !dbg.contains("s.tok")
                && !dbg.contains("s.login")
                && !dbg.contains("lease-id"),
            "{dbg}"
        );
        let none = Secrets {
            logins: None,
            leases: None,
            ..back
        };
        assert!(Secrets::decode(&none.encode()).is_some_and(|s| s.logins.is_none()));
        assert!(Secrets::decode(b"garbage").is_none());
    }

    const SPC: &str = "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\n\
        metadata:\n  name: app\nspec:\n  provider: openbao\n  parameters:\n    roleName: r\n\
        \x20   objects: |\n      - {objectName: a, secretPath: secret/data/a}\n";

    fn record(name: &str, manifest: usize) -> VolumeRecord {
        VolumeRecord {
            name: name.into(),
            slot: 3,
            volume_id: format!("csi-{name}"),
            target: PathBuf::from(format!("/t/{name}")),
            created_target: true,
            created_at: SystemTime::UNIX_EPOCH,
            published_at: SystemTime::UNIX_EPOCH,
            manifest,
            spc_namespace: Some("ns".into()),
            pod: PodRecord {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u".into()),
                service_account: Some("sa".into()),
            },
            uid: 0,
            gid: 1000,
            credential: CredentialKind::Jwt,
            files: vec![FileRecord {
                node: 1,
                generation: 4,
                version: "v1-x".into(),
                fetched_at: SystemTime::UNIX_EPOCH,
            }],
        }
    }

    fn checkpoint(volumes: Vec<VolumeRecord>) -> Checkpoint {
        Checkpoint {
            format: FORMAT,
            writer: "test".into(),
            hub_dir: "/run/baofs/hub-1".into(),
            conn: ConnState::adopted(40),
            handoff_socket: "/run/baofs/handoff.sock".into(),
            manifests: vec![SPC.into(), "not: an spc".into()],
            volumes,
        }
    }

    #[test]
    fn restored_volumes_rebuild_specs_and_say_what_is_missing() {
        let cp = checkpoint(vec![
            record("with", 0),
            record("without", 0),
            record("bad", 1),
        ]);
        let secrets = Secrets {
            version_key: None,
            credentials: vec![(
                "with".into(),
                Credentials::Jwt(SecretString::new("jwt".into())),
            )],
            logins: None,
            leases: None,
        };
        let v = restored_volumes(&cp, Some(&secrets));
        let spec = v[0].spec.as_ref().expect("spec");
        assert_eq!(
            spec.spc.namespace.as_deref(),
            Some("ns"),
            "namespace from the record"
        );
        assert_eq!(
            (spec.ownership.gid, spec.pod.uid.as_deref()),
            (1000, Some("u"))
        );
        assert!(matches!(&spec.credentials, Credentials::Jwt(t) if t.expose() == "jwt"));
        assert!(v[0].pending.is_none());
        assert_eq!(v[0].prior[0].generation, 4);
        // No credential: restorable, but nothing to fetch with until kubelet republishes.
        assert!(v[1].spec.is_ok() && v[1].pending.is_some());
        // A manifest this build cannot parse: not restorable, and the error says why.
        assert!(
            v[2].spec
                .as_ref()
                .is_err_and(|e| e.contains("no longer parses"))
        );
    }

    #[test]
    fn carry_over_keeps_values_only_for_the_same_volume() {
        let first = checkpoint(vec![record("a", 0), record("b", 0)]);
        let last = checkpoint(vec![record("a", 0), record("b", 1), record("c", 0)]);
        let fetched = |v: &mut RestoredVolume| v.fetched = Some(Ok(Vec::new()));
        let mut from = restored_volumes(&first, None);
        from.iter_mut().for_each(fetched);
        let mut into = restored_volumes(&last, None);
        carry_over(from, &mut into, &first, &last);
        assert!(into[0].fetched.is_some(), "same name, slot and manifest");
        assert!(into[1].fetched.is_none(), "its SPC changed");
        assert!(into[2].fetched.is_none(), "published during the handoff");
    }

    #[test]
    fn a_checkpoint_round_trips_through_the_holder_json() {
        let cp = checkpoint(vec![record("a", 0)]);
        let json = serde_json::to_value(&cp).expect("json");
        assert_eq!(
            json["volumes"][0]["credential"], "jwt",
            "the kind, never the credential"
        );
        let back: Checkpoint = serde_json::from_value(json).expect("parse");
        assert_eq!(back, cp);
    }
}
