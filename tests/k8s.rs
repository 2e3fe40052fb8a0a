//! The Kubernetes side end to end, against a real kube-apiserver (with etcd) and a real
//! OpenBao: a real `baofs csi` (SPCs from the API, `--kubeconfig`) is driven over its CSI
//! socket by a tonic client, for a Pod that exists in the API server (it stays Pending: there
//! is no scheduler or kubelet). OpenBao's kubernetes auth method is configured against this
//! API server, so every login is a real TokenReview of a real pod-bound TokenRequest token.
//!
//! Run with `sudo scripts/test.sh` (it builds/starts kube-apiserver and OpenBao and exports
//! `BAOFS_TEST_KUBECONFIG`, `BAOFS_TEST_KUBE_ADDR`, `BAOFS_TEST_BAO_ADDR`,
//! `BAOFS_TEST_BAO_TOKEN`). Without them the tests fail; `BAOFS_SKIP_FUSE=1` skips them. Every
//! wait polls an observable condition with a deadline; every process, mount and API object is
//! removed, also when a test fails.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baofs::k8s::crd::{
    SecretObject, SecretObjectData, SecretProviderClass, SecretProviderClassPodStatus,
    SecretProviderClassSpec,
};
use baofs_csi::v1::identity_client::IdentityClient;
use baofs_csi::v1::node_client::NodeClient;
use baofs_csi::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};
use baofs_csi::v1::{
    NodePublishVolumeRequest, NodeUnpublishVolumeRequest, ProbeRequest, VolumeCapability,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use serde_json::json;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

#[path = "common/bao.rs"]
mod bao;
#[path = "common/process.rs"]
mod process;
use bao::Bao;
use process::{spawn_holder, terminate, wait_exit};

const NODE_ID: &str = "k8s-test-node";
const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_secs(1);

// -------------------------------------------------------------------------------------------
// Environment

struct Env {
    bao: Bao,
    kube: kube::Client,
    kubeconfig: PathBuf,
    kube_addr: String,
    kube_ca: String,
}

/// `None` only with `BAOFS_SKIP_FUSE=1`; otherwise a missing prerequisite fails the test.
async fn setup() -> Option<Env> {
    if std::env::var("BAOFS_SKIP_FUSE").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: BAOFS_SKIP_FUSE=1 (the Kubernetes tests mount FUSE volumes)");
        return None;
    }
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(
        uid, 0,
        "the Kubernetes tests mount FUSE volumes and must run as root: run `sudo scripts/test.sh` \
         (or set BAOFS_SKIP_FUSE=1 to skip them explicitly)"
    );
    let need = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!(
                "{k} is not set: run the tests with `scripts/test.sh` (it builds and starts \
                 kube-apiserver, etcd and OpenBao), or set BAOFS_SKIP_FUSE=1 to skip them"
            )
        })
    };
    let kubeconfig = PathBuf::from(need("BAOFS_TEST_KUBECONFIG"));
    let kube_addr = need("BAOFS_TEST_KUBE_ADDR");
    let bao = Bao::new(&need("BAOFS_TEST_BAO_ADDR"), &need("BAOFS_TEST_BAO_TOKEN"));
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let ca_b64 = kc.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .certificate_authority_data
        .clone()
        .unwrap();
    let kube_ca = String::from_utf8(STANDARD.decode(ca_b64).unwrap()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let kube = kube::Client::try_from(config).unwrap();
    Some(Env {
        bao,
        kube,
        kubeconfig,
        kube_addr,
        kube_ca,
    })
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos & 0xffff)
}

/// Polls `f` until it returns `Some`, or panics with `what` after `deadline`.
async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
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

// -------------------------------------------------------------------------------------------
// The API server

/// One test's namespace and cluster-scoped objects; everything is deleted at the end (or on
/// a panic, from `Drop`).
struct Cluster {
    client: kube::Client,
    ns: String,
    bindings: Vec<String>,
    cleaned: bool,
}

impl Cluster {
    async fn new(client: &kube::Client, prefix: &str) -> Self {
        let ns = unique(prefix);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(ns.clone()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        Self {
            client: client.clone(),
            ns,
            bindings: Vec::new(),
            cleaned: false,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn service_account(&self, name: &str) {
        self.api::<ServiceAccount>()
            .create(
                &PostParams::default(),
                &ServiceAccount {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }

    /// A Pod of `sa` (Pending forever: nothing schedules it). Returns its uid.
    async fn pod(&self, name: &str, sa: &str) -> String {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": sa,
                "automountServiceAccountToken": false,
                "containers": [{"name": "app", "image": "registry.invalid/app:1"}]
            }
        }))
        .unwrap();
        let created = self
            .api::<Pod>()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        created.metadata.uid.unwrap()
    }

    /// A TokenRequest token of `sa` for `audiences`, bound to `pod` when given.
    async fn token(
        &self,
        sa: &str,
        audiences: Option<Vec<String>>,
        pod: Option<(&str, &str)>,
    ) -> String {
        let tr = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences,
                expiration_seconds: Some(3600),
                bound_object_ref: pod.map(|(name, uid)| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.into()),
                    uid: Some(uid.into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = self
            .api::<ServiceAccount>()
            .create_token_request(sa, &PostParams::default(), &tr)
            .await
            .unwrap();
        out.status.unwrap().token.unwrap()
    }

    async fn bind_auth_delegator(&mut self, sa: &str) {
        let name = unique("baofs-test-reviewer");
        let crb: ClusterRoleBinding = serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": self.ns}]
        }))
        .unwrap();
        Api::<ClusterRoleBinding>::all(self.client.clone())
            .create(&PostParams::default(), &crb)
            .await
            .unwrap();
        self.bindings.push(name);
    }

    async fn spc(&self, spc: SecretProviderClass) {
        self.api::<SecretProviderClass>()
            .create(&PostParams::default(), &spc)
            .await
            .unwrap();
    }

    async fn events(&self, regarding: &str) -> Vec<Event> {
        self.api::<Event>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.regarding
                    .as_ref()
                    .and_then(|r| r.name.as_deref())
                    .is_some_and(|n| n == regarding)
            })
            .collect()
    }

    async fn wait_event(&self, pod: &str, reason: &str) -> Event {
        eventually(
            &format!("event {reason} on pod {pod}"),
            DEADLINE,
            || async {
                self.events(pod)
                    .await
                    .into_iter()
                    .find(|e| e.reason.as_deref() == Some(reason))
            },
        )
        .await
    }

    /// Deletes every object this test made. Without a controller-manager nothing
    /// garbage-collects or finalizes, so each kind is deleted explicitly and the namespace is
    /// finalized by hand.
    async fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        cleanup(self.client.clone(), self.ns.clone(), self.bindings.clone()).await;
    }
}

async fn cleanup(client: kube::Client, ns: String, bindings: Vec<String>) {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let lp = ListParams::default();
    let _ = Api::<Pod>::namespaced(client.clone(), &ns)
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<Secret>::namespaced(client.clone(), &ns)
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<Event>::namespaced(client.clone(), &ns)
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<SecretProviderClass>::namespaced(client.clone(), &ns)
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<SecretProviderClassPodStatus>::namespaced(client.clone(), &ns)
        .delete_collection(&dp, &lp)
        .await;
    for b in bindings {
        let _ = Api::<ClusterRoleBinding>::all(client.clone())
            .delete(&b, &dp)
            .await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(&ns, &dp).await;
    // No namespace controller: drop the `kubernetes` finalizer ourselves.
    let body = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns},
        "spec": {"finalizers": []}
    });
    let _ = namespaces
        .replace_subresource("finalize", &ns, &PostParams::default(), &body)
        .await;
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (client, ns, bindings) = (self.client.clone(), self.ns.clone(), self.bindings.clone());
        // A panicking test: clean up from a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(cleanup(client, ns, bindings));
            }
        })
        .join();
    }
}

/// OpenBao kubernetes auth at a fresh mount, against this API server: TokenReview with the
/// token of `reviewer` (bound to system:auth-delegator). Role `role` admits `sa` of the
/// namespace with audience `openbao` and reads `paths`.
async fn kubernetes_auth(
    env: &Env,
    cluster: &mut Cluster,
    role: &str,
    sa: &str,
    paths: &[String],
) -> String {
    let mount = unique("k8s");
    cluster.service_account("bao-reviewer").await;
    cluster.bind_auth_delegator("bao-reviewer").await;
    let reviewer = cluster.token("bao-reviewer", None, None).await;
    let bao = &env.bao;
    bao.ok(
        reqwest::Method::POST,
        &format!("sys/auth/{mount}"),
        Some(&json!({"type": "kubernetes"})),
    )
    .await;
    bao.ok(
        reqwest::Method::POST,
        &format!("auth/{mount}/config"),
        Some(&json!({
            "kubernetes_host": env.kube_addr,
            "kubernetes_ca_cert": env.kube_ca,
            "token_reviewer_jwt": reviewer,
            "disable_local_ca_jwt": true,
        })),
    )
    .await;
    let policy: String = paths
        .iter()
        .map(|p| format!("path \"{p}\" {{ capabilities = [\"read\"] }}\n"))
        .collect();
    bao.ok(
        reqwest::Method::PUT,
        &format!("sys/policies/acl/{mount}-{role}"),
        Some(&json!({ "policy": policy })),
    )
    .await;
    bao.ok(
        reqwest::Method::POST,
        &format!("auth/{mount}/role/{role}"),
        Some(&json!({
            "bound_service_account_names": [sa],
            "bound_service_account_namespaces": [cluster.ns],
            "audience": "openbao",
            "token_policies": [format!("{mount}-{role}")],
            "token_ttl": "1h",
        })),
    )
    .await;
    mount
}

// -------------------------------------------------------------------------------------------
// The driver process

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let mp = PathBuf::from(l.split(' ').nth(4)?.replace("\\040", " "));
            mp.starts_with(dir).then_some(mp)
        })
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    out
}

/// One `baofs csi` process. `Driver::start` gives it a directory of its own; `Node::driver`
/// starts it in a node's directory (state dir, CSI socket and targets shared by every driver
/// incarnation) and in its own process group, so a crash can be simulated by SIGKILLing the
/// group.
struct Driver {
    child: Option<Child>,
    label: String,
    /// The process group (node drivers only).
    pgid: Option<libc::pid_t>,
    dir: PathBuf,
    /// The directory is this driver's: stopping unmounts what is left and removes it.
    owns_dir: bool,
    socket: PathBuf,
    stderr: PathBuf,
    stdout: PathBuf,
    metrics: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Driver {
    async fn start(env: &Env) -> Self {
        let dir = std::env::temp_dir()
            .canonicalize()
            .unwrap()
            .join(unique("bk-driver"));
        std::fs::create_dir_all(&dir).unwrap();
        Self::spawn(env, dir, "driver", false).await
    }

    /// Spawns `baofs csi` with `dir/state` and `dir/plugin/csi.sock` (stdout to
    /// `dir/<label>.out`, log to `dir/<label>.log`) and waits until it answers Probe ready.
    async fn spawn(env: &Env, dir: PathBuf, label: &str, in_node: bool) -> Self {
        let socket = dir.join("plugin/csi.sock");
        let stderr = dir.join(format!("{label}.log"));
        let stdout = dir.join(format!("{label}.out"));
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_baofs"));
        cmd.args([
            "--log-level",
            "baofs=debug,info",
            "csi",
            "--nodeid",
            NODE_ID,
        ])
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg(format!("--metrics-addr=127.0.0.1:{port}"))
        .args([
            "--enable-secret-rotation=true",
            &format!("--rotation-poll-interval={}ms", POLL.as_millis()),
            "--retry-deadline=2s",
            "--request-timeout=5s",
        ])
        .env_remove("BAO_ADDR")
        .env_remove("VAULT_ADDR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap());
        if in_node {
            cmd.process_group(0);
        }
        let child = cmd.spawn().expect("spawn baofs csi");
        let pgid = in_node.then(|| libc::pid_t::try_from(child.id()).unwrap());
        let mut d = Driver {
            child: Some(child),
            label: label.to_owned(),
            pgid,
            dir,
            owns_dir: !in_node,
            socket,
            stderr,
            stdout,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        };
        let start = Instant::now();
        loop {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("[{label}] baofs csi exited early ({status}):\n{}", d.log());
            }
            // A predecessor's socket file may still exist: only a Probe answered counts.
            if d.socket.exists() && d.probe_ready().await {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "[{label}] baofs csi not ready within {DEADLINE:?}:\n{}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        d
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        Endpoint::try_from(format!("unix://{}", self.socket.display()))?
            .connect()
            .await
    }

    async fn probe_ready(&self) -> bool {
        let Ok(ch) = self.channel().await else {
            return false;
        };
        IdentityClient::new(ch)
            .probe(ProbeRequest {})
            .await
            .is_ok_and(|r| r.into_inner().ready == Some(true))
    }

    async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await.unwrap())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// What the process printed on stdout so far, line by line.
    fn stdout_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A kubelet-style target for `pod_uid`: the parent exists, `mount` does not.
    fn target(&self, pod_uid: &str, volume: &str) -> PathBuf {
        let parent = self
            .dir
            .join(format!("pods/{pod_uid}/volumes/kubernetes.io~csi/{volume}"));
        std::fs::create_dir_all(&parent).unwrap();
        parent.join("mount")
    }

    async fn scrape(&self) -> String {
        reqwest::get(&self.metrics)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// SIGKILL to the whole process group (a crash: no destructor runs, nothing is unmounted);
    /// waits until the child is reaped and the group is empty.
    #[allow(unsafe_code)]
    fn kill_group(&mut self) {
        let pgid = self
            .pgid
            .expect("only a node's driver has its own process group");
        let mut child = self.child.take().expect("the driver runs");
        kill_group(pgid, libc::SIGKILL);
        child.wait().unwrap();
        let start = Instant::now();
        // SAFETY: kill(2) with signal 0 only checks for existence.
        while unsafe { libc::kill(-pgid, 0) } == 0 {
            assert!(
                start.elapsed() < DEADLINE,
                "[{}] process group {pgid} still has members {DEADLINE:?} after SIGKILL",
                self.label
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and a clean exit. A driver with its own directory must have unmounted
    /// everything and its directory is removed; a node's driver with a holder leaves what is
    /// still mounted to the holder (`Node::teardown` checks the node).
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        terminate(&mut child);
        let status = wait_exit(&mut child, Duration::from_secs(20));
        if status.is_none()
            && let Some(pgid) = self.pgid
        {
            kill_group(pgid, libc::SIGKILL);
            let _ = child.wait();
        }
        let log = self.log();
        assert!(
            status.is_some_and(|s| s.success()),
            "[{}] baofs csi did not exit cleanly ({status:?}):\n{log}",
            self.label
        );
        if self.owns_dir {
            let left = mounts_under(&self.dir);
            assert!(left.is_empty(), "left mounted after shutdown: {left:?}");
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        log
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
            if wait_exit(&mut child, Duration::from_secs(20)).is_none() {
                if let Some(pgid) = self.pgid {
                    kill_group(pgid, libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            eprintln!(
                "--- [{}] baofs csi stdout: {:?}\n--- [{}] log ---\n{}",
                self.label,
                self.stdout_lines(),
                self.label,
                self.log()
            );
        } else if std::thread::panicking() && !self.owns_dir {
            eprintln!(
                "--- [{}] (exited) stdout: {:?}\n--- [{}] log ---\n{}",
                self.label,
                self.stdout_lines(),
                self.label,
                self.log()
            );
        }
        if !self.owns_dir {
            return;
        }
        for mp in mounts_under(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&mp).status();
        }
        if mounts_under(&self.dir).is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[allow(unsafe_code)]
fn kill_group(pgid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; `pgid` is the group of a child we
    // spawned with process_group(0) and have not reaped yet.
    let rc = unsafe { libc::kill(-pgid, sig) };
    if rc != 0 {
        eprintln!(
            "k8s: kill(-{pgid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }
}

// -------------------------------------------------------------------------------------------
// A node for restart survival: one directory (state dir, CSI socket, targets) shared by every
// `baofs csi` incarnation, and the fd holder

struct Node {
    dir: PathBuf,
    state: PathBuf,
    holder: Option<Child>,
    holder_log: PathBuf,
    holders: u32,
}

impl Node {
    fn new() -> Self {
        let dir = std::env::temp_dir()
            .canonicalize()
            .unwrap()
            .join(unique("bk-node"));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            state: dir.join("state"),
            holder_log: dir.join("holder-0.log"),
            dir,
            holder: None,
            holders: 0,
        }
    }

    /// Starts `baofs holder --state-dir D` and waits until its socket accepts a connection.
    fn start_holder(&mut self) {
        assert!(self.holder.is_none(), "a holder already runs");
        self.holders += 1;
        self.holder_log = self.dir.join(format!("holder-{}.log", self.holders));
        self.holder = Some(spawn_holder(&self.state, &self.holder_log, DEADLINE));
    }

    /// SIGKILL, as a node-level crash would.
    fn kill_holder(&mut self) {
        let mut child = self.holder.take().expect("the holder runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts `baofs csi` here (in its own process group) and waits until it is ready.
    async fn driver(&self, env: &Env, label: &str) -> Driver {
        Driver::spawn(env, self.dir.clone(), label, true).await
    }

    /// The end of a test, once every volume was unpublished and every driver stopped: only a
    /// hub under the state dir may be left (a driver with a holder does not unmount on
    /// SIGTERM); it is unmounted, then the holder stops, last. Nothing may be left mounted.
    fn teardown(&mut self) {
        let left = mounts_under(&self.dir);
        for mp in &left {
            assert!(
                mp.starts_with(&self.state),
                "only a hub under the state dir may outlive the driver, found {mp:?}: {left:?}"
            );
            detach(mp);
        }
        if let Some(mut child) = self.holder.take() {
            terminate(&mut child);
            let status = wait_exit(&mut child, DEADLINE);
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            assert!(
                status.is_some_and(|s| s.success()),
                "baofs holder did not exit cleanly on SIGTERM ({status:?}):\n{}",
                std::fs::read_to_string(&self.holder_log).unwrap_or_default()
            );
        }
        let left = mounts_under(&self.dir);
        assert!(left.is_empty(), "mounts left under the node: {left:?}");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Node {
    /// Runs after the drivers were dropped (declared after the node): detaches whatever is left
    /// without touching it (nobody may serve it), then stops the holder, last.
    fn drop(&mut self) {
        let left = mounts_under(&self.dir);
        for mp in &left {
            detach(mp);
        }
        if let Some(mut child) = self.holder.take() {
            terminate(&mut child);
            if wait_exit(&mut child, DEADLINE).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if !left.is_empty() {
            eprintln!("k8s: lazily unmounted leftovers: {left:?}");
        }
        if mounts_under(&self.dir).is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// umount2(MNT_DETACH) without touching the mount (no stat, no canonicalization), so it cannot
/// block on a FUSE connection nobody serves.
#[allow(unsafe_code)]
fn detach(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        eprintln!(
            "k8s: umount2({}, MNT_DETACH): {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

fn is_mounted(path: &Path) -> bool {
    mounts_under(path).iter().any(|m| m == path)
}

// -------------------------------------------------------------------------------------------
// Requests, metrics

fn volume_id() -> String {
    let h = unique("v").bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3)
    });
    format!(
        "csi-{h:016x}{:016x}",
        h.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15
    )
}

struct PodRef {
    ns: String,
    name: String,
    uid: String,
    sa: String,
}

/// kubelet's request for an inline volume: pod info in the volume context, the tokens in
/// `secrets` (Kubernetes ≥ 1.35 with `serviceAccountTokenInSecrets: true`).
fn publish_request(
    vol: &str,
    target: &Path,
    pod: &PodRef,
    spc: &str,
    token: &str,
) -> NodePublishVolumeRequest {
    let context: HashMap<String, String> = [
        ("secretProviderClass", spc),
        ("csi.storage.k8s.io/pod.name", &pod.name),
        ("csi.storage.k8s.io/pod.namespace", &pod.ns),
        ("csi.storage.k8s.io/pod.uid", &pod.uid),
        ("csi.storage.k8s.io/serviceAccount.name", &pod.sa),
        ("csi.storage.k8s.io/ephemeral", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let tokens =
        json!({"openbao": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"}});
    NodePublishVolumeRequest {
        volume_id: vol.to_owned(),
        target_path: target.to_str().unwrap().to_owned(),
        volume_capability: Some(VolumeCapability {
            access_mode: Some(AccessMode {
                mode: access_mode::Mode::SingleNodeWriter.into(),
            }),
            access_type: Some(AccessType::Mount(MountVolume::default())),
        }),
        readonly: true,
        volume_context: context,
        secrets: [(
            "csi.storage.k8s.io/serviceAccount.tokens".to_owned(),
            tokens.to_string(),
        )]
        .into(),
        ..Default::default()
    }
}

/// Sum of the samples of `name` whose labels contain every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum::<f64>()
        + 0.0
}

fn spc_object(
    name: &str,
    params: BTreeMap<String, String>,
    secret_objects: Vec<SecretObject>,
) -> SecretProviderClass {
    SecretProviderClass {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: SecretProviderClassSpec {
            provider: Some("openbao".to_owned()),
            parameters: Some(params),
            secret_objects: Some(secret_objects),
        },
    }
}

fn data(pairs: &[(&str, &str)]) -> Option<Vec<SecretObjectData>> {
    Some(
        pairs
            .iter()
            .map(|(o, k)| SecretObjectData {
                object_name: Some((*o).to_owned()),
                key: Some((*k).to_owned()),
            })
            .collect(),
    )
}

/// A self-signed certificate and its key (PEM), made with openssl.
fn tls_pair(dir: &Path) -> (String, String) {
    let (key, crt) = (dir.join("tls.key"), dir.join("tls.crt"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .args(["-days", "1", "-subj", "/CN=app.test"])
        .output()
        .expect("openssl (scripts/peers.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(crt).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

fn secret_value(s: &Secret, key: &str) -> String {
    let bytes = &s.data.as_ref().unwrap()[key].0;
    String::from_utf8(bytes.clone()).unwrap()
}

// -------------------------------------------------------------------------------------------
// Tests

/// Publish for a real Pod with an SPC from the API: files, synced Secrets (labels, type,
/// data, TLS extraction, owner), SPCPS with versions, events and metrics; rotation within one
/// poll; a republish that writes nothing; a failing poll; unpublish leaving the Secret to the
/// garbage collector; another service account refused; a missing SPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_end_to_end() {
    let Some(env) = setup().await else {
        return;
    };
    let mut cluster = Cluster::new(&env.kube, "bk").await;
    let ns = cluster.ns.clone();
    let kv = unique("app");
    let tls_dir = std::env::temp_dir().join(unique("bk-tls"));
    std::fs::create_dir_all(&tls_dir).unwrap();
    let (cert, key) = tls_pair(&tls_dir);
    std::fs::remove_dir_all(&tls_dir).unwrap();
    env.bao
        .kv2_put(
            &kv,
            json!({"username": "alice", "password": "pw-1", "bundle": format!("{key}{cert}")}),
        )
        .await;

    // Identities: the app's SA and Pod, another SA and Pod, OpenBao trusting this API server.
    cluster.service_account("app").await;
    cluster.service_account("other").await;
    let app_uid = cluster.pod("app-pod", "app").await;
    let other_uid = cluster.pod("other-pod", "other").await;
    let mount = kubernetes_auth(
        &env,
        &mut cluster,
        "app",
        "app",
        &[format!("secret/data/{kv}")],
    )
    .await;

    let params: BTreeMap<String, String> = [
        ("baoAddress", env.bao.addr.clone()),
        ("roleName", "app".to_owned()),
        ("baoKubernetesMountPath", mount.clone()),
        (
            "objects",
            format!(
                "- objectName: username\n  secretPath: secret/data/{kv}\n  secretKey: username\n\
                 - objectName: password\n  secretPath: secret/data/{kv}\n  secretKey: password\n\
                 - objectName: tls/bundle.pem\n  secretPath: secret/data/{kv}\n  secretKey: bundle\n"
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let creds = SecretObject {
        secret_name: Some("app-creds".into()),
        type_: Some("Opaque".into()),
        labels: Some([("app".to_owned(), "demo".to_owned())].into()),
        annotations: Some([("team".to_owned(), "payments".to_owned())].into()),
        data: data(&[("username", "user"), ("password", "pass")]),
    };
    let tls = SecretObject {
        secret_name: Some("app-tls".into()),
        type_: Some("kubernetes.io/tls".into()),
        labels: None,
        annotations: None,
        data: data(&[("tls/bundle.pem", "tls.crt"), ("tls/bundle.pem", "tls.key")]),
    };
    cluster
        .spc(spc_object("app-spc", params, vec![creds, tls]))
        .await;

    let driver = Driver::start(&env).await;
    let mut node = driver.node().await;
    let app = PodRef {
        ns: ns.clone(),
        name: "app-pod".into(),
        uid: app_uid.clone(),
        sa: "app".into(),
    };
    let token = cluster
        .token(
            "app",
            Some(vec!["openbao".into()]),
            Some(("app-pod", &app_uid)),
        )
        .await;
    let vol = volume_id();
    let target = driver.target(&app_uid, "secrets");

    // 1. Publish: files served.
    node.node_publish_volume(publish_request(&vol, &target, &app, "app-spc", &token))
        .await
        .unwrap_or_else(|s| panic!("publish: {s:?}\n{}", driver.log()));
    assert_eq!(
        std::fs::read_to_string(target.join("username")).unwrap(),
        "alice"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("password")).unwrap(),
        "pw-1"
    );

    // 2. Synced Secrets: labels, annotations, type, data, TLS extraction, the Pod as owner.
    let secrets = cluster.api::<Secret>();
    let creds = eventually("Secret app-creds", DEADLINE, || async {
        secrets.get_opt("app-creds").await.unwrap()
    })
    .await;
    let labels = creds.metadata.labels.clone().unwrap();
    assert_eq!(labels["secrets-store.csi.k8s.io/managed"], "true");
    assert_eq!(labels["app"], "demo");
    assert_eq!(
        creds.metadata.annotations.clone().unwrap()["team"],
        "payments"
    );
    assert_eq!(creds.type_.as_deref(), Some("Opaque"));
    assert_eq!(secret_value(&creds, "user"), "alice");
    assert_eq!(secret_value(&creds, "pass"), "pw-1");
    let owners = creds.metadata.owner_references.clone().unwrap();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].name.as_str()),
        ("Pod", "app-pod")
    );
    assert_eq!(owners[0].uid, app_uid);
    assert_ne!(owners[0].controller, Some(true));
    let managers: Vec<String> = creds
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.iter().all(|m| m == "baofs"), "{managers:?}");
    let tls_secret = eventually("Secret app-tls", DEADLINE, || async {
        secrets.get_opt("app-tls").await.unwrap()
    })
    .await;
    assert_eq!(tls_secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secret_value(&tls_secret, "tls.crt").trim(), cert.trim());
    assert_eq!(secret_value(&tls_secret, "tls.key").trim(), key.trim());

    // 3. SecretProviderClassPodStatus: name, node label, owner, status with versions.
    let statuses = cluster.api::<SecretProviderClassPodStatus>();
    let status_name = format!("app-pod-{ns}-app-spc");
    let spcps = eventually("SecretProviderClassPodStatus", DEADLINE, || async {
        statuses.get_opt(&status_name).await.unwrap()
    })
    .await;
    assert_eq!(
        spcps.metadata.labels.clone().unwrap()["internal.secrets-store.csi.k8s.io/node-name"],
        NODE_ID
    );
    assert_eq!(
        spcps.metadata.owner_references.clone().unwrap()[0].uid,
        app_uid
    );
    let st = &spcps.status;
    assert_eq!(st.pod_name, "app-pod");
    assert_eq!(st.secret_provider_class_name, "app-spc");
    assert!(st.mounted);
    assert_eq!(st.target_path, target.to_str().unwrap());
    let ids: Vec<&str> = st.objects.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["password", "tls/bundle.pem", "username"]);
    assert!(
        st.objects
            .iter()
            .all(|o| !o.version.is_empty() && !o.version.contains("pw-1"))
    );
    let version_of = |s: &SecretProviderClassPodStatus, id: &str| {
        s.status
            .objects
            .iter()
            .find(|o| o.id == id)
            .unwrap()
            .version
            .clone()
    };

    // 4. A republish (fresh token) and polls that change nothing write nothing.
    let scrape = driver.scrape().await;
    let writes_before = metric(&scrape, "baofs_k8s_writes_total", &[]);
    eprintln!(
        "API writes for the first publish (2 synced Secrets): {writes_before} \
         (secret {}, secret_owner {}, pod_status {}, event {})",
        metric(&scrape, "baofs_k8s_writes_total", &[("kind", "secret")]),
        metric(
            &scrape,
            "baofs_k8s_writes_total",
            &[("kind", "secret_owner")]
        ),
        metric(&scrape, "baofs_k8s_writes_total", &[("kind", "pod_status")]),
        metric(&scrape, "baofs_k8s_writes_total", &[("kind", "event")]),
    );
    let unchanged_before = metric(&scrape, "rotation_reconcile_total", &[("rotated", "false")]);
    let (creds_rv, tls_rv, spcps_rv) = (
        creds.metadata.resource_version.clone(),
        tls_secret.metadata.resource_version.clone(),
        spcps.metadata.resource_version.clone(),
    );
    let token2 = cluster
        .token(
            "app",
            Some(vec!["openbao".into()]),
            Some(("app-pod", &app_uid)),
        )
        .await;
    node.node_publish_volume(publish_request(&vol, &target, &app, "app-spc", &token2))
        .await
        .unwrap();
    eventually(
        "two polls without change after the republish",
        DEADLINE,
        || async {
            let m = driver.scrape().await;
            (metric(&m, "rotation_reconcile_total", &[("rotated", "false")])
                >= unchanged_before + 2.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        secrets
            .get("app-creds")
            .await
            .unwrap()
            .metadata
            .resource_version,
        creds_rv
    );
    assert_eq!(
        secrets
            .get("app-tls")
            .await
            .unwrap()
            .metadata
            .resource_version,
        tls_rv
    );
    assert_eq!(
        statuses
            .get(&status_name)
            .await
            .unwrap()
            .metadata
            .resource_version,
        spcps_rv
    );
    assert_eq!(
        metric(&driver.scrape().await, "baofs_k8s_writes_total", &[]),
        writes_before,
        "a republish or an unchanged poll wrote to the API server"
    );

    // 5. Rotation in OpenBao: file, Secret and SPCPS within one poll; events.
    let written = Instant::now();
    env.bao
        .kv2_put(
            &kv,
            json!({"username": "alice", "password": "pw-2", "bundle": format!("{key}{cert}")}),
        )
        .await;
    let one_poll = POLL + POLL / 10 + Duration::from_secs(2);
    eventually("rotated file, Secret and SPCPS", one_poll, || async {
        let file = std::fs::read_to_string(target.join("password")).ok()?;
        let s = secrets.get("app-creds").await.ok()?;
        let p = statuses.get(&status_name).await.ok()?;
        (file == "pw-2"
            && secret_value(&s, "pass") == "pw-2"
            && version_of(&p, "password") != version_of(&spcps, "password"))
        .then_some(())
    })
    .await;
    let rotation_latency = written.elapsed();
    eprintln!(
        "rotation visible in file, Secret and SPCPS after {rotation_latency:?} (poll {POLL:?})"
    );
    let p = statuses.get(&status_name).await.unwrap();
    // An object whose bytes did not change keeps its content hash; its KV v2 version prefix
    // follows the secret's new version (`v1-<hash>` -> `v2-<hash>`).
    let content_hash = |v: String| v.split_once('-').map(|(_, h)| h.to_owned()).unwrap_or(v);
    assert_eq!(
        content_hash(version_of(&p, "username")),
        content_hash(version_of(&spcps, "username"))
    );
    assert_ne!(version_of(&p, "username"), version_of(&spcps, "username"));
    cluster
        .wait_event("app-pod", "SecretRotationComplete")
        .await;
    let m = driver.scrape().await;
    eprintln!(
        "API writes for one rotation of one object: {} (secret {}, pod_status {}, event {})",
        metric(&m, "baofs_k8s_writes_total", &[]) - writes_before,
        metric(&m, "baofs_k8s_writes_total", &[("kind", "secret")])
            - metric(&scrape, "baofs_k8s_writes_total", &[("kind", "secret")]),
        metric(&m, "baofs_k8s_writes_total", &[("kind", "pod_status")])
            - metric(&scrape, "baofs_k8s_writes_total", &[("kind", "pod_status")]),
        metric(&m, "baofs_k8s_writes_total", &[("kind", "event")])
            - metric(&scrape, "baofs_k8s_writes_total", &[("kind", "event")]),
    );
    assert_eq!(
        secrets
            .get("app-tls")
            .await
            .unwrap()
            .metadata
            .resource_version,
        tls_rv,
        "an unchanged Secret was rewritten"
    );
    let ev = cluster.wait_event("app-pod", "MountRotationComplete").await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert!(ev.note.clone().unwrap_or_default().contains("password"));
    cluster
        .wait_event("app-pod", "SecretRotationComplete")
        .await;

    // 6. Another service account's token: refused by OpenBao's TokenReview-backed login.
    let other = PodRef {
        ns: ns.clone(),
        name: "other-pod".into(),
        uid: other_uid.clone(),
        sa: "other".into(),
    };
    let other_token = cluster
        .token(
            "other",
            Some(vec!["openbao".into()]),
            Some(("other-pod", &other_uid)),
        )
        .await;
    let other_target = driver.target(&other_uid, "secrets");
    let status = node
        .node_publish_volume(publish_request(
            &volume_id(),
            &other_target,
            &other,
            "app-spc",
            &other_token,
        ))
        .await
        .expect_err("another service account must be refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("app-spc"), "{}", status.message());
    assert!(!other_target.join("username").exists());
    let failed = cluster.wait_event("other-pod", "FailedToMount").await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert!(
        !failed
            .note
            .clone()
            .unwrap_or_default()
            .contains(&other_token)
    );

    // 7. A missing SPC: NotFound with upstream's message.
    let status = node
        .node_publish_volume(publish_request(
            &volume_id(),
            &other_target,
            &other,
            "nope",
            &other_token,
        ))
        .await
        .expect_err("missing SPC");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status
            .message()
            .contains(&format!("failed to get secretproviderclass {ns}/nope")),
        "{}",
        status.message()
    );

    // 7b. kubelet's token has expired (no republish came): the driver mints a pod-bound
    // token through TokenRequest and the login succeeds.
    let expired = format!(
        "{}.{}.c2ln",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":1000}"#)
    );
    let vol2 = volume_id();
    let target2 = driver.target(&app_uid, "again");
    node.node_publish_volume(publish_request(&vol2, &target2, &app, "app-spc", &expired))
        .await
        .unwrap_or_else(|s| panic!("publish with an expired token: {s:?}\n{}", driver.log()));
    assert_eq!(
        std::fs::read_to_string(target2.join("password")).unwrap(),
        "pw-2"
    );
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: vol2,
        target_path: target2.to_str().unwrap().to_owned(),
    })
    .await
    .unwrap();

    // 8. A failing poll (the secret is gone): MountRotationFailed, the files stay.
    env.bao
        .ok(
            reqwest::Method::DELETE,
            &format!("secret/metadata/{kv}"),
            None,
        )
        .await;
    let failed = cluster.wait_event("app-pod", "MountRotationFailed").await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert_eq!(
        std::fs::read_to_string(target.join("password")).unwrap(),
        "pw-2"
    );

    // 9. Unpublish: unmounted; the Secret stays, owned by the Pod (the garbage collector
    // deletes it with the last owning Pod); the SPCPS stays, owned by the Pod.
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: vol.clone(),
        target_path: target.to_str().unwrap().to_owned(),
    })
    .await
    .unwrap();
    assert!(!target.join("username").exists());
    let kept = secrets.get("app-creds").await.unwrap();
    assert_eq!(kept.metadata.owner_references.unwrap()[0].uid, app_uid);
    assert!(statuses.get_opt(&status_name).await.unwrap().is_some());

    // 10. Every upstream counter moved.
    let m = driver.scrape().await;
    for (name, labels) in [
        ("node_publish_total", vec![("provider", "openbao")]),
        ("node_unpublish_total", vec![]),
        (
            "node_publish_error_total",
            vec![("error_type", "ProviderError")],
        ),
        (
            "node_publish_error_total",
            vec![("error_type", "SecretProviderClassNotFound")],
        ),
        ("sync_k8s_secret_total", vec![("provider", "openbao")]),
        ("sync_k8s_secret_duration_sec_count", vec![]),
        ("rotation_reconcile_total", vec![("rotated", "true")]),
        ("rotation_reconcile_total", vec![("rotated", "false")]),
        (
            "rotation_reconcile_error_total",
            vec![("error_type", "FailedToRotate")],
        ),
        ("rotation_reconcile_duration_sec_count", vec![]),
        (
            "baofs_openbao_fetches_total",
            vec![("kind", "publish"), ("outcome", "ok")],
        ),
        (
            "baofs_openbao_requests_total",
            vec![("kind", "login"), ("outcome", "2xx")],
        ),
        (
            "baofs_openbao_requests_total",
            vec![("kind", "read"), ("outcome", "2xx")],
        ),
        (
            "baofs_k8s_writes_total",
            vec![("kind", "secret"), ("outcome", "ok")],
        ),
        (
            "baofs_k8s_writes_total",
            vec![("kind", "pod_status"), ("outcome", "ok")],
        ),
        (
            "baofs_k8s_writes_total",
            vec![("kind", "event"), ("outcome", "ok")],
        ),
    ] {
        assert!(
            metric(&m, name, &labels) >= 1.0,
            "{name} {labels:?} did not move:\n{m}"
        );
    }
    assert!(metric(&m, "node_publish_total", &[]) >= 2.0);
    assert!(metric(&m, "sync_k8s_secret_total", &[]) >= 3.0);
    assert!(
        !m.contains("pw-") && !m.contains("alice"),
        "a value in the metrics"
    );

    let log = driver.stop();
    assert!(
        !log.contains("watching SecretProviderClasses failed"),
        "the SPC watch failed:\n{log}"
    );
    for needle in [
        "pw-1",
        "pw-2",
        token.as_str(),
        token2.as_str(),
        other_token.as_str(),
    ] {
        assert!(
            !log.contains(needle),
            "the driver log contains a value or a token"
        );
    }
    cluster.cleanup().await;
}

/// A Secret of the same name that the driver does not manage is never overwritten: the mount
/// is served, the pod gets FailedToCreateSecret, the foreign Secret is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_secret_is_not_overwritten() {
    let Some(env) = setup().await else {
        return;
    };
    let mut cluster = Cluster::new(&env.kube, "bkf").await;
    let ns = cluster.ns.clone();
    let kv = unique("foreign");
    env.bao.kv2_put(&kv, json!({"password": "pw-f"})).await;
    cluster.service_account("app").await;
    let uid = cluster.pod("app-pod", "app").await;
    let mount = kubernetes_auth(
        &env,
        &mut cluster,
        "app",
        "app",
        &[format!("secret/data/{kv}")],
    )
    .await;
    let foreign: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "shared", "labels": {"owner": "someone-else"}},
        "stringData": {"password": "theirs"}
    }))
    .unwrap();
    let secrets = cluster.api::<Secret>();
    let foreign = secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let params: BTreeMap<String, String> = [
        ("baoAddress", env.bao.addr.clone()),
        ("roleName", "app".to_owned()),
        ("baoKubernetesMountPath", mount),
        (
            "objects",
            format!(
                "- objectName: password\n  secretPath: secret/data/{kv}\n  secretKey: password\n"
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let so = SecretObject {
        secret_name: Some("shared".into()),
        type_: Some("Opaque".into()),
        data: data(&[("password", "password")]),
        ..Default::default()
    };
    cluster.spc(spc_object("spc", params, vec![so])).await;

    let driver = Driver::start(&env).await;
    let mut node = driver.node().await;
    let pod = PodRef {
        ns: ns.clone(),
        name: "app-pod".into(),
        uid: uid.clone(),
        sa: "app".into(),
    };
    let token = cluster
        .token("app", Some(vec!["openbao".into()]), Some(("app-pod", &uid)))
        .await;
    let target = driver.target(&uid, "secrets");
    let vol = volume_id();
    node.node_publish_volume(publish_request(&vol, &target, &pod, "spc", &token))
        .await
        .unwrap_or_else(|s| panic!("publish: {s:?}\n{}", driver.log()));
    assert_eq!(
        std::fs::read_to_string(target.join("password")).unwrap(),
        "pw-f"
    );
    let ev = cluster.wait_event("app-pod", "FailedToCreateSecret").await;
    assert!(
        ev.note.clone().unwrap_or_default().contains("not managed"),
        "{ev:?}"
    );
    let after = secrets.get("shared").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        foreign.metadata.resource_version
    );
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: vol,
        target_path: target.to_str().unwrap().to_owned(),
    })
    .await
    .unwrap();
    driver.stop();
    cluster.cleanup().await;
}

// -------------------------------------------------------------------------------------------
// Restart survival, the Kubernetes side (docs/design.md §16): a `baofs holder` keeps the FUSE
// connection; `baofs csi --kubeconfig` SIGKILLed (its process group) and started again takes
// over every volume. What it writes to the API server then: nothing for files that did not
// change, a rotation for those that did, FailedToMount when the holder died too.

/// One pod of the takeover tests: its own KV v2 secret (`password`, `username`), its own SPC
/// syncing both into a Secret of its own, and its volume.
struct PodVolume {
    pod: PodRef,
    kv: String,
    spc: String,
    /// The synced Secret.
    secret: String,
    /// The SecretProviderClassPodStatus.
    status: String,
    vol: String,
    target: PathBuf,
}

impl PodVolume {
    fn read(&self, name: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.target.join(name))
    }
}

/// Pods `names` of service account `app` in `cluster`, each with its own secret
/// (`password` = `<pod>-pw-1`), SPC and synced Secret, and OpenBao's kubernetes auth admitting
/// them. Targets are in `node`; nothing is published.
async fn takeover_pods(
    env: &Env,
    cluster: &mut Cluster,
    node: &Node,
    names: &[&str],
) -> Vec<PodVolume> {
    cluster.service_account("app").await;
    let mut out = Vec::new();
    for name in names {
        let uid = cluster.pod(name, "app").await;
        let kv = unique(&format!("to-{name}"));
        env.bao
            .kv2_put(
                &kv,
                json!({"password": format!("{name}-pw-1"), "username": *name}),
            )
            .await;
        let spc = format!("{name}-spc");
        let target = node
            .dir
            .join(format!("pods/{uid}/volumes/kubernetes.io~csi/secrets"));
        std::fs::create_dir_all(&target).unwrap();
        out.push(PodVolume {
            pod: PodRef {
                ns: cluster.ns.clone(),
                name: (*name).to_owned(),
                uid,
                sa: "app".into(),
            },
            status: format!("{name}-{}-{spc}", cluster.ns),
            secret: format!("{name}-creds"),
            spc,
            kv,
            vol: volume_id(),
            target: target.join("mount"),
        });
    }
    let paths: Vec<String> = out
        .iter()
        .map(|p| format!("secret/data/{}", p.kv))
        .collect();
    let mount = kubernetes_auth(env, cluster, "app", "app", &paths).await;
    for p in &out {
        let params: BTreeMap<String, String> = [
            ("baoAddress", env.bao.addr.clone()),
            ("roleName", "app".to_owned()),
            ("baoKubernetesMountPath", mount.clone()),
            (
                "objects",
                format!(
                    "- objectName: password\n  secretPath: secret/data/{kv}\n  secretKey: password\n\
                     - objectName: username\n  secretPath: secret/data/{kv}\n  secretKey: username\n",
                    kv = p.kv
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let so = SecretObject {
            secret_name: Some(p.secret.clone()),
            type_: Some("Opaque".into()),
            data: data(&[("password", "pass"), ("username", "user")]),
            ..Default::default()
        };
        cluster.spc(spc_object(&p.spc, params, vec![so])).await;
    }
    out
}

/// kubelet's NodePublishVolume for `p` with a fresh pod-bound token.
async fn publish_pod(
    cluster: &Cluster,
    csi: &mut NodeClient<Channel>,
    driver: &Driver,
    p: &PodVolume,
) {
    let token = cluster
        .token(
            "app",
            Some(vec!["openbao".into()]),
            Some((&p.pod.name, &p.pod.uid)),
        )
        .await;
    csi.node_publish_volume(publish_request(&p.vol, &p.target, &p.pod, &p.spc, &token))
        .await
        .unwrap_or_else(|s| panic!("publish {}: {s:?}\n{}", p.pod.name, driver.log()));
}

async fn unpublish_pods(csi: &mut NodeClient<Channel>, pods: &[PodVolume]) {
    for p in pods {
        csi.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: p.vol.clone(),
            target_path: p.target.to_str().unwrap().to_owned(),
        })
        .await
        .unwrap_or_else(|s| panic!("unpublish {}: {s:?}", p.target.display()));
    }
}

/// Waits until the Secret of `p` holds `password` and its SPCPS lists the target; returns both.
async fn synced(
    cluster: &Cluster,
    p: &PodVolume,
    password: &str,
) -> (Secret, SecretProviderClassPodStatus) {
    let secrets = cluster.api::<Secret>();
    let statuses = cluster.api::<SecretProviderClassPodStatus>();
    eventually(
        &format!("Secret {} = {password} and SPCPS {}", p.secret, p.status),
        DEADLINE,
        || async {
            let s = secrets.get_opt(&p.secret).await.unwrap()?;
            let st = statuses.get_opt(&p.status).await.unwrap()?;
            (secret_value(&s, "pass") == password
                && st.status.target_path == p.target.to_str().unwrap()
                && st.status.objects.len() == 2)
                .then_some((s, st))
        },
    )
    .await
}

/// `(Secret, SPCPS)` resourceVersions of every pod.
async fn resource_versions(cluster: &Cluster, pods: &[PodVolume]) -> Vec<(String, String)> {
    let secrets = cluster.api::<Secret>();
    let statuses = cluster.api::<SecretProviderClassPodStatus>();
    let mut out = Vec::new();
    for p in pods {
        let s = secrets.get(&p.secret).await.unwrap();
        let st = statuses.get(&p.status).await.unwrap();
        out.push((
            s.metadata.resource_version.unwrap(),
            st.metadata.resource_version.unwrap(),
        ));
    }
    out
}

fn object_version(s: &SecretProviderClassPodStatus, id: &str) -> String {
    s.status
        .objects
        .iter()
        .find(|o| o.id == id)
        .unwrap_or_else(|| panic!("no object {id} in {:?}", s.status))
        .version
        .clone()
}

fn took_over(n: usize) -> String {
    format!("baofs: took over {n} volumes")
}

/// Waits until `driver` has counted `polls` more unchanged polls than `from` (every volume is
/// polled once per interval).
async fn wait_unchanged_polls(driver: &Driver, from: f64, polls: f64) {
    eventually(&format!("{polls} unchanged polls"), DEADLINE, || async {
        let m = driver.scrape().await;
        (metric(&m, "rotation_reconcile_total", &[("rotated", "false")]) >= from + polls)
            .then_some(())
    })
    .await;
}

/// The FailedToMount events of `pod`.
async fn failed_to_mount(cluster: &Cluster, pod: &str) -> Vec<Event> {
    cluster
        .events(pod)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedToMount"))
        .collect()
}

/// A takeover after SIGKILL writes nothing to the API server when nothing changed (the version
/// key is handed over, so the versions are the same), republishes and polls write nothing
/// either; a later rotation reaches file, Secret and SPCPS within one poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_writes_nothing_when_nothing_changed() {
    let Some(env) = setup().await else {
        return;
    };
    let mut cluster = Cluster::new(&env.kube, "bkt").await;
    let mut node = Node::new();
    let pods = takeover_pods(&env, &mut cluster, &node, &["pod-a", "pod-b"]).await;
    node.start_holder();
    let mut d1 = node.driver(&env, "driver-1").await;
    assert!(
        !d1.stdout_lines().iter().any(|l| l.contains("took over")),
        "a first start has nothing to take over: {:?}",
        d1.stdout_lines()
    );
    let mut csi = d1.node().await;
    for p in &pods {
        publish_pod(&cluster, &mut csi, &d1, p).await;
    }
    drop(csi);
    let mut before = Vec::new();
    for p in &pods {
        assert_eq!(p.read("password").unwrap(), format!("{}-pw-1", p.pod.name));
        before.push(synced(&cluster, p, &format!("{}-pw-1", p.pod.name)).await.1);
    }
    let rvs = resource_versions(&cluster, &pods).await;
    let m = d1.scrape().await;
    eprintln!(
        "takeover (unchanged): API writes of the first driver for 2 publishes: {}",
        metric(&m, "baofs_k8s_writes_total", &[])
    );

    // The crash, and the successor.
    d1.kill_group();
    let d2 = node.driver(&env, "driver-2").await;
    let lines = d2.stdout_lines();
    assert!(
        lines.contains(&took_over(2)),
        "the successor must print {:?}: {lines:?}\n{}",
        took_over(2),
        d2.log()
    );
    for p in &pods {
        assert_eq!(p.read("password").unwrap(), format!("{}-pw-1", p.pod.name));
        assert_eq!(p.read("username").unwrap(), p.pod.name);
    }

    // kubelet's periodic republishes (fresh tokens) and two polls of each volume: no write.
    let mut csi = d2.node().await;
    for p in &pods {
        publish_pod(&cluster, &mut csi, &d2, p).await;
    }
    let m = d2.scrape().await;
    let unchanged = metric(&m, "rotation_reconcile_total", &[("rotated", "false")]);
    wait_unchanged_polls(&d2, unchanged, 2.0 * pods.len() as f64).await;
    let m = d2.scrape().await;
    assert_eq!(
        metric(&m, "baofs_k8s_writes_total", &[]),
        0.0,
        "the successor wrote to the API server although nothing changed \
         (secret {}, secret_owner {}, pod_status {}, event {}):\n{}",
        metric(&m, "baofs_k8s_writes_total", &[("kind", "secret")]),
        metric(&m, "baofs_k8s_writes_total", &[("kind", "secret_owner")]),
        metric(&m, "baofs_k8s_writes_total", &[("kind", "pod_status")]),
        metric(&m, "baofs_k8s_writes_total", &[("kind", "event")]),
        d2.log()
    );
    assert_eq!(
        resource_versions(&cluster, &pods).await,
        rvs,
        "a Secret or an SPCPS was rewritten after the takeover"
    );
    assert_eq!(
        metric(&m, "rotation_reconcile_total", &[("rotated", "true")]),
        0.0
    );
    for p in &pods {
        assert!(
            cluster
                .events(&p.pod.name)
                .await
                .iter()
                .all(|e| e.reason.as_deref() != Some("MountRotationComplete")),
            "a rotation was reported for {} although nothing changed",
            p.pod.name
        );
    }

    // A rotation after the takeover: file, Secret and SPCPS within one poll; pod-b untouched.
    let (a, b) = (&pods[0], &pods[1]);
    env.bao
        .kv2_put(
            &a.kv,
            json!({"password": "pod-a-pw-2", "username": "pod-a"}),
        )
        .await;
    let secrets = cluster.api::<Secret>();
    let statuses = cluster.api::<SecretProviderClassPodStatus>();
    let written = Instant::now();
    let one_poll = POLL + POLL / 10 + Duration::from_secs(2);
    let after = eventually(
        "rotated file, Secret and SPCPS of pod-a",
        one_poll,
        || async {
            let file = a.read("password").ok()?;
            let s = secrets.get(&a.secret).await.ok()?;
            let st = statuses.get(&a.status).await.ok()?;
            (file == "pod-a-pw-2"
                && secret_value(&s, "pass") == "pod-a-pw-2"
                && object_version(&st, "password") != object_version(&before[0], "password"))
            .then_some(st)
        },
    )
    .await;
    eprintln!(
        "takeover (unchanged): a rotation after the takeover was visible in file, Secret and \
         SPCPS after {:?} (poll {POLL:?})",
        written.elapsed()
    );
    let content_hash = |v: String| v.split_once('-').map(|(_, h)| h.to_owned()).unwrap_or(v);
    assert_eq!(
        content_hash(object_version(&after, "username")),
        content_hash(object_version(&before[0], "username")),
        "an unchanged object's content hash changed across the takeover"
    );
    let ev = cluster.wait_event("pod-a", "MountRotationComplete").await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert!(ev.note.clone().unwrap_or_default().contains("password"));
    cluster.wait_event("pod-a", "SecretRotationComplete").await;
    let m = d2.scrape().await;
    for kind in ["secret", "pod_status", "event"] {
        assert!(
            metric(
                &m,
                "baofs_k8s_writes_total",
                &[("kind", kind), ("outcome", "ok")]
            ) >= 1.0,
            "the rotation after the takeover wrote no {kind}:\n{m}"
        );
    }
    wait_unchanged_polls(
        &d2,
        metric(&m, "rotation_reconcile_total", &[("rotated", "false")]),
        2.0,
    )
    .await;
    assert_eq!(
        resource_versions(&cluster, std::slice::from_ref(b)).await[0],
        rvs[1],
        "pod-b's Secret or SPCPS was rewritten by pod-a's rotation"
    );
    assert_eq!(b.read("password").unwrap(), "pod-b-pw-1");

    unpublish_pods(&mut csi, &pods).await;
    drop(csi);
    let log = d2.stop();
    assert!(
        !log.contains("pod-a-pw") && !log.contains("pod-b-pw"),
        "the driver log contains a value"
    );
    node.teardown();
    cluster.cleanup().await;
}

/// A secret changed in OpenBao while no driver ran: the successor refetches it before serving
/// (the new value is in the file as soon as it prints `took over`), and reports it as a
/// rotation at once: Secret, SPCPS and MountRotationComplete are written before it serves,
/// not at a later poll (which would find nothing new).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_during_the_gap_is_synced_after_takeover() {
    let Some(env) = setup().await else {
        return;
    };
    let mut cluster = Cluster::new(&env.kube, "bkg").await;
    let mut node = Node::new();
    let pods = takeover_pods(&env, &mut cluster, &node, &["pod-a", "pod-b"]).await;
    node.start_holder();
    let mut d1 = node.driver(&env, "driver-1").await;
    let mut csi = d1.node().await;
    for p in &pods {
        publish_pod(&cluster, &mut csi, &d1, p).await;
    }
    drop(csi);
    let mut before = Vec::new();
    for p in &pods {
        before.push(synced(&cluster, p, &format!("{}-pw-1", p.pod.name)).await.1);
    }
    let rvs = resource_versions(&cluster, &pods).await;

    d1.kill_group();
    let (a, b) = (&pods[0], &pods[1]);
    env.bao
        .kv2_put(
            &a.kv,
            json!({"password": "pod-a-pw-2", "username": "pod-a"}),
        )
        .await;
    let d2 = node.driver(&env, "driver-2").await;
    let lines = d2.stdout_lines();
    assert!(
        lines.contains(&took_over(2)),
        "the successor must print {:?}: {lines:?}\n{}",
        took_over(2),
        d2.log()
    );
    // Refetched before serving: the new value at once, no poll needed.
    assert_eq!(a.read("password").unwrap(), "pod-a-pw-2");
    assert_eq!(a.read("username").unwrap(), "pod-a");
    assert_eq!(b.read("password").unwrap(), "pod-b-pw-1");

    // Written before the successor served: read once, no waiting.
    let secrets = cluster.api::<Secret>();
    let statuses = cluster.api::<SecretProviderClassPodStatus>();
    let s = secrets.get(&a.secret).await.unwrap();
    let st = statuses.get(&a.status).await.unwrap();
    let m = d2.scrape().await;
    assert_eq!(
        secret_value(&s, "pass"),
        "pod-a-pw-2",
        "the Secret was not synced by the takeover (writes: secret {}, pod_status {}, event {})\n{}",
        metric(&m, "baofs_k8s_writes_total", &[("kind", "secret")]),
        metric(&m, "baofs_k8s_writes_total", &[("kind", "pod_status")]),
        metric(&m, "baofs_k8s_writes_total", &[("kind", "event")]),
        d2.log()
    );
    assert_ne!(
        object_version(&st, "password"),
        object_version(&before[0], "password"),
        "the SPCPS was not updated by the takeover\n{}",
        d2.log()
    );
    assert_eq!(st.status.target_path, a.target.to_str().unwrap());
    let content_hash = |v: String| v.split_once('-').map(|(_, h)| h.to_owned()).unwrap_or(v);
    assert_eq!(
        content_hash(object_version(&st, "username")),
        content_hash(object_version(&before[0], "username")),
        "an unchanged object's content hash changed across the takeover"
    );
    let ev = cluster.wait_event("pod-a", "MountRotationComplete").await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert!(
        ev.note.clone().unwrap_or_default().contains("password"),
        "{ev:?}"
    );
    cluster.wait_event("pod-a", "SecretRotationComplete").await;
    assert_eq!(
        resource_versions(&cluster, std::slice::from_ref(b)).await[0],
        rvs[1],
        "pod-b did not change: its Secret and SPCPS must not be rewritten"
    );
    assert!(
        metric(&m, "rotation_reconcile_total", &[("rotated", "true")]) >= 1.0,
        "the takeover's rotation was not counted:\n{m}"
    );

    // Later polls find nothing new and write nothing.
    let synced_rvs = resource_versions(&cluster, &pods).await;
    let writes = metric(&m, "baofs_k8s_writes_total", &[]);
    wait_unchanged_polls(
        &d2,
        metric(&m, "rotation_reconcile_total", &[("rotated", "false")]),
        2.0 * pods.len() as f64,
    )
    .await;
    assert_eq!(resource_versions(&cluster, &pods).await, synced_rvs);
    assert_eq!(
        metric(&d2.scrape().await, "baofs_k8s_writes_total", &[]),
        writes,
        "a poll after the takeover wrote again"
    );

    let mut csi = d2.node().await;
    unpublish_pods(&mut csi, &pods).await;
    drop(csi);
    d2.stop();
    node.teardown();
    cluster.cleanup().await;
}

/// Driver and holder both SIGKILLed: the next driver (started alone, or after a new holder)
/// detaches the dead targets and emits a Warning FailedToMount on each pod that lost its
/// volume, naming the target; the pods come from the checkpoint record in the state dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_gone_emits_failed_to_mount_on_the_pods() {
    let Some(env) = setup().await else {
        return;
    };
    let mut cluster = Cluster::new(&env.kube, "bkh").await;
    let mut node = Node::new();
    let pods = takeover_pods(
        &env,
        &mut cluster,
        &node,
        &["pod-a", "pod-b", "pod-c", "pod-d"],
    )
    .await;
    let (first, second) = pods.split_at(2);

    // Round 1: the next driver starts without a holder. Round 2: a new holder starts first.
    for (round, (pods, new_holder)) in [(first, false), (second, true)].into_iter().enumerate() {
        node.start_holder();
        let mut d1 = node.driver(&env, &format!("driver-{round}-1")).await;
        let mut csi = d1.node().await;
        for p in pods {
            publish_pod(&cluster, &mut csi, &d1, p).await;
            synced(&cluster, p, &format!("{}-pw-1", p.pod.name)).await;
        }
        drop(csi);

        d1.kill_group();
        node.kill_holder();
        if new_holder {
            node.start_holder();
        }
        let d2 = node.driver(&env, &format!("driver-{round}-2")).await;
        let lines = d2.stdout_lines();
        assert!(
            !lines.iter().any(|l| l.contains("took over")),
            "nothing can be taken over without the holder: {lines:?}"
        );
        for p in pods {
            let target = p.target.display().to_string();
            assert!(!is_mounted(&p.target), "{target} is still a mount point");
            if let Err(e) = std::fs::metadata(&p.target) {
                assert_ne!(e.raw_os_error(), Some(libc::ENOTCONN), "stat {target}: {e}");
            }
            let ev = cluster.wait_event(&p.pod.name, "FailedToMount").await;
            let note = ev.note.clone().unwrap_or_default();
            assert_eq!(ev.type_.as_deref(), Some("Warning"), "{ev:?}");
            assert!(
                note.contains(&target) && note.contains("was lost"),
                "the note must name the target and say the volume was lost: {note:?}"
            );
            assert_eq!(
                ev.regarding.as_ref().and_then(|r| r.uid.as_deref()),
                Some(p.pod.uid.as_str())
            );
        }
        eprintln!(
            "holder gone ({}): FailedToMount on {:?}",
            if new_holder {
                "a new holder started first"
            } else {
                "no holder"
            },
            pods.iter().map(|p| &p.pod.name).collect::<Vec<_>>()
        );
        let mut csi = d2.node().await;
        unpublish_pods(&mut csi, pods).await;
        drop(csi);
        d2.stop();
        let left = mounts_under(&node.dir);
        assert!(
            new_holder || left.is_empty(),
            "a driver without a holder unmounts everything on SIGTERM: {left:?}"
        );
    }
    // Each pod got its event once: a driver reports a lost volume only at the start that
    // found it dead.
    for p in &pods {
        assert_eq!(
            failed_to_mount(&cluster, &p.pod.name).await.len(),
            1,
            "{}",
            p.pod.name
        );
    }
    node.teardown();
    cluster.cleanup().await;
}
