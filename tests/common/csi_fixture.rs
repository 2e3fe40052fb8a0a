//! The kubelet side of `baofs csi` for the integration tests (tests/csi.rs, tests/restart.rs):
//! environment checks, service-account JWTs signed with a test key (OpenBao jwt auth at
//! `kubernetes`), OpenBao roles, temp dirs, mountinfo, SPC files, kubelet-style publish and
//! unpublish requests, the CSI socket client and the `baofs csi` command line.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baofs_csi::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};
use baofs_csi::v1::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

use crate::bao::Bao;

pub(crate) const NODE_ID: &str = "csi-test-node";
pub(crate) const AUDIENCE: &str = "openbao";
pub(crate) const AUTH_MOUNT: &str = "kubernetes";
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

// -------------------------------------------------------------------------------------------
// Environment

pub(crate) struct Ctx {
    pub(crate) bao: Bao,
}

/// `None` only with `BAOFS_SKIP_FUSE=1`; otherwise a missing prerequisite fails the test.
pub(crate) fn setup() -> Option<Ctx> {
    if std::env::var("BAOFS_SKIP_FUSE").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: BAOFS_SKIP_FUSE=1 (CSI tests need FUSE and OpenBao)");
        return None;
    }
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(
        uid, 0,
        "the CSI tests mount FUSE volumes and must run as root: run `sudo scripts/test.sh` \
         (or set BAOFS_SKIP_FUSE=1 to skip them explicitly)"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing (modprobe fuse), or set BAOFS_SKIP_FUSE=1"
    );
    let addr = std::env::var("BAOFS_TEST_BAO_ADDR").unwrap_or_else(|_| {
        panic!(
            "BAOFS_TEST_BAO_ADDR is not set: run the tests with `scripts/test.sh` (it installs \
             and starts OpenBao), or set BAOFS_SKIP_FUSE=1 to skip them"
        )
    });
    let token = std::env::var("BAOFS_TEST_BAO_TOKEN")
        .expect("BAOFS_TEST_BAO_TOKEN is not set: run the tests with `scripts/test.sh`");
    Some(Ctx {
        bao: Bao::new(&addr, &token),
    })
}

pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos & 0xffff)
}

/// Polls `f` until it returns `Some`, or panics with `what` after `deadline`.
pub(crate) async fn eventually<T>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// -------------------------------------------------------------------------------------------
// OpenBao

impl Bao {
    /// JWT auth at `kubernetes` trusting the test key. The key is added to the keys already
    /// trusted, so other test binaries sharing this server keep working.
    pub(crate) async fn ensure_jwt_auth(&self) {
        static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        DONE.get_or_init(|| async {
            let auths = self.ok(reqwest::Method::GET, "sys/auth", None).await;
            let key = format!("{AUTH_MOUNT}/");
            let existing = auths
                .get("data")
                .and_then(|d| d.get(&key))
                .or(auths.get(&key));
            match existing.and_then(|a| a.get("type")).and_then(Value::as_str) {
                Some("jwt") => {}
                Some(other) => panic!("auth mount {key} exists with type {other}, expected jwt"),
                None => {
                    self.ok(
                        reqwest::Method::POST,
                        &format!("sys/auth/{AUTH_MOUNT}"),
                        Some(&json!({"type": "jwt"})),
                    )
                    .await;
                }
            }
            let (_, config) = self
                .call(
                    reqwest::Method::GET,
                    &format!("auth/{AUTH_MOUNT}/config"),
                    None,
                )
                .await;
            let mut pubkeys: Vec<String> = config["data"]["jwt_validation_pubkeys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let mine = keys().public_pem.trim().to_owned();
            if !pubkeys.iter().any(|k| k.trim() == mine) {
                pubkeys.push(mine);
            }
            self.ok(
                reqwest::Method::POST,
                &format!("auth/{AUTH_MOUNT}/config"),
                Some(&json!({ "jwt_validation_pubkeys": pubkeys })),
            )
            .await;
        })
        .await;
    }

    /// Policy and role `role`: service account `namespace/sa` may read `paths`.
    pub(crate) async fn role(&self, role: &str, namespace: &str, sa: &str, paths: &[String]) {
        let policy: String = paths
            .iter()
            .map(|p| format!("path \"{p}\" {{ capabilities = [\"read\"] }}\n"))
            .collect();
        self.ok(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{role}"),
            Some(&json!({ "policy": policy })),
        )
        .await;
        self.ok(
            reqwest::Method::POST,
            &format!("auth/{AUTH_MOUNT}/role/{role}"),
            Some(&json!({
                "role_type": "jwt",
                "bound_audiences": [AUDIENCE],
                "user_claim": "sub",
                "bound_subject": format!("system:serviceaccount:{namespace}:{sa}"),
                "token_policies": [role],
                "token_ttl": "1h",
            })),
        )
        .await;
    }
}

// -------------------------------------------------------------------------------------------
// Service-account tokens signed with a test key (openssl CLI)

struct Keys {
    private_pem: String,
    public_pem: String,
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl (scripts/peers.sh installs it)");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let private = openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            None,
        );
        let private_pem = String::from_utf8(private).unwrap();
        let public = openssl(&["pkey", "-pubout"], Some(private_pem.as_bytes()));
        Keys {
            private_pem,
            public_pem: String::from_utf8(public).unwrap(),
        }
    })
}

/// A Kubernetes service-account token (RS256) for `namespace/sa`, bound to `pod`.
pub(crate) fn sa_token(namespace: &str, sa: &str, pod: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "aud": [AUDIENCE],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "jti": unique("jti"),
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": pod, "uid": "0b9a2d6e-6f1c-4c3e-9a55-1f2e3d4c5b6a"},
            "serviceaccount": {"name": sa, "uid": "6a1f0c47-3c4e-4d39-8d8e-6f1a2b3c4d5e"}
        }
    });
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "baofs-csi-test"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let dir = TempDir::new("jwt");
    let key = dir.path.join("sa.key");
    std::fs::write(&key, &keys().private_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sig = openssl(
        &["dgst", "-sha256", "-binary", "-sign", key.to_str().unwrap()],
        Some(input.as_bytes()),
    );
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// kubelet's `csi.storage.k8s.io/serviceAccount.tokens` for one token.
pub(crate) fn tokens_json(audience: &str, token: &str) -> String {
    json!({ audience: {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"} }).to_string()
}

// -------------------------------------------------------------------------------------------
// Files, mounts

pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir()
            .canonicalize()
            .unwrap()
            .join(unique(&format!("bc-{prefix}")));
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if mounts_under(&self.path).is_empty() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Mount points (and fs types) under `dir` per /proc/self/mountinfo, deepest first.
pub(crate) fn mounts_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut out: Vec<(PathBuf, String)> = text
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mp = PathBuf::from(unescape(pre.split(' ').nth(4)?));
            let fstype = post.split(' ').next()?.to_owned();
            mp.starts_with(dir).then_some((mp, fstype))
        })
        .collect();
    out.sort_by_key(|(p, _)| std::cmp::Reverse(p.as_os_str().len()));
    out
}

pub(crate) fn is_mounted(path: &Path) -> bool {
    mounts_under(path).iter().any(|(p, _)| p == path)
}

/// An SPC file for namespace `ns` under `spc_dir`.
pub(crate) fn write_spc(
    spc_dir: &Path,
    ns: &str,
    name: &str,
    params: &[(&str, &str)],
    objects: &str,
) {
    let mut yaml = format!(
        "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  \
         name: {name}\n  namespace: {ns}\nspec:\n  provider: openbao\n  parameters:\n"
    );
    for (k, v) in params {
        yaml.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    yaml.push_str("    objects: |\n");
    for line in objects.lines() {
        yaml.push_str(&format!("      {line}\n"));
    }
    let dir = spc_dir.join(ns);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.yaml")), yaml).unwrap();
}

// -------------------------------------------------------------------------------------------
// Requests

pub(crate) struct Pod {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) sa: String,
}

impl Pod {
    pub(crate) fn new(namespace: &str, sa: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: unique("web"),
            uid: unique("uid"),
            sa: sa.to_owned(),
        }
    }

    pub(crate) fn token(&self) -> String {
        sa_token(&self.namespace, &self.sa, &self.name)
    }

    /// kubelet's volume context for an inline volume with `podInfoOnMount` and
    /// `tokenRequests: [{audience: openbao}]`.
    pub(crate) fn context(&self, spc: &str, tokens: Option<String>) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [
            ("secretProviderClass", spc),
            ("csi.storage.k8s.io/pod.name", &self.name),
            ("csi.storage.k8s.io/pod.namespace", &self.namespace),
            ("csi.storage.k8s.io/pod.uid", &self.uid),
            ("csi.storage.k8s.io/serviceAccount.name", &self.sa),
            ("csi.storage.k8s.io/ephemeral", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if let Some(t) = tokens {
            m.insert("csi.storage.k8s.io/serviceAccount.tokens".into(), t);
        }
        m
    }
}

pub(crate) fn volume_id() -> String {
    format!(
        "csi-{:064x}",
        u128::from(rand_u64()) << 64 | u128::from(rand_u64())
    )
}

fn rand_u64() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    N.fetch_add(nanos | 1, Ordering::Relaxed)
        .wrapping_mul(0x2545_f491_4f6c_dd1d)
}

pub(crate) fn mount_capability(group: &str) -> Option<VolumeCapability> {
    Some(VolumeCapability {
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter.into(),
        }),
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: String::new(),
            mount_flags: Vec::new(),
            volume_mount_group: group.to_owned(),
        })),
    })
}

pub(crate) fn publish_request(
    volume_id: &str,
    target: &Path,
    context: HashMap<String, String>,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume_id.to_owned(),
        target_path: target.to_str().unwrap().to_owned(),
        volume_capability: mount_capability(""),
        readonly: true,
        volume_context: context,
        ..Default::default()
    }
}

pub(crate) fn unpublish_request(volume_id: &str, target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: volume_id.to_owned(),
        target_path: target.to_str().unwrap().to_owned(),
    }
}

// -------------------------------------------------------------------------------------------
// The driver process

/// A connection to the CSI socket at `socket`.
pub(crate) async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    Endpoint::try_from(format!("unix://{}", socket.display()))?
        .connect()
        .await
}

/// `baofs csi` serving `socket`, SPCs from `spc_dir`, state in `state`, rotation every `poll`,
/// a short OpenBao retry deadline, debug logs, and no OpenBao address from the environment.
/// The caller sets stdout/stderr and spawns it.
pub(crate) fn driver_command(socket: &Path, spc_dir: &Path, state: &Path, poll: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baofs"));
    cmd.args([
        "--log-level",
        "baofs=debug,info",
        "csi",
        "--nodeid",
        NODE_ID,
    ])
    .arg(format!("--endpoint=unix://{}", socket.display()))
    .arg("--spc-dir")
    .arg(spc_dir)
    .arg("--state-dir")
    .arg(state)
    .args([
        "--enable-secret-rotation=true",
        &format!("--rotation-poll-interval={poll}"),
        "--retry-deadline=2s",
        "--request-timeout=2s",
    ])
    .env_remove("BAO_ADDR")
    .env_remove("VAULT_ADDR")
    .env_remove("RUST_LOG")
    .stdin(Stdio::null());
    cmd
}

/// A kubelet-style target under `root`: `pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`,
/// its parent created, `mount` itself not.
pub(crate) fn kubelet_target(root: &Path, pod_uid: &str, volume: &str) -> PathBuf {
    let parent = root.join(format!("pods/{pod_uid}/volumes/kubernetes.io~csi/{volume}"));
    std::fs::create_dir_all(&parent).expect("create the target's parent");
    parent.join("mount")
}
