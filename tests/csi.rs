//! `baofs csi` end to end: a tonic CSI client over the Unix socket drives a real `baofs csi`
//! process, which mounts real FUSE volumes with values from a real OpenBao dev server, logging
//! in with service-account-shaped JWTs this test signs (OpenBao jwt auth at `kubernetes`, the
//! SPC's default auth mount, trusting the test's public key).
//!
//! Run with `sudo scripts/test.sh` (it starts OpenBao and exports `BAOFS_TEST_BAO_ADDR` /
//! `BAOFS_TEST_BAO_TOKEN`). Without them the tests fail; `BAOFS_SKIP_FUSE=1` skips them.
//! Every wait polls an observable condition with a deadline; every driver is stopped and every
//! mount removed, also when a test fails.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use baofs_csi::v1::identity_client::IdentityClient;
use baofs_csi::v1::node_client::NodeClient;
use baofs_csi::v1::node_service_capability::{Type as CapType, rpc::Type as RpcType};
use baofs_csi::v1::{
    GetPluginCapabilitiesRequest, GetPluginInfoRequest, NodeGetCapabilitiesRequest,
    NodeGetInfoRequest, NodePublishVolumeRequest, NodeStageVolumeRequest, ProbeRequest,
};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

#[path = "common/bao.rs"]
mod bao;
#[path = "common/csi_fixture.rs"]
mod fixture;
#[path = "common/process.rs"]
mod process;
use fixture::{
    AUDIENCE, DEADLINE, NODE_ID, Pod, TempDir, connect, driver_command, eventually, is_mounted,
    mount_capability, mounts_under, publish_request, setup, tokens_json, unique, unpublish_request,
    volume_id, write_spc,
};
use process::{terminate, wait_exit};

const DRIVER: &str = "secrets-store.csi.k8s.io";

// -------------------------------------------------------------------------------------------
// The driver process

struct Driver {
    child: Option<Child>,
    dir: TempDir,
    socket: PathBuf,
    spc_dir: PathBuf,
    stderr: PathBuf,
}

impl Driver {
    /// Starts `baofs csi` with rotation every 300 ms and a short retry deadline, and waits
    /// until Probe says ready.
    async fn start(name: &str) -> Self {
        let dir = TempDir::new(name);
        let socket = dir.path.join("plugin/csi.sock");
        let spc_dir = dir.path.join("spc");
        std::fs::create_dir_all(&spc_dir).unwrap();
        let stderr = dir.path.join("driver.log");
        let child = driver_command(&socket, &spc_dir, &dir.path.join("state"), "300ms")
            .stdout(std::fs::File::create(dir.path.join("driver.out")).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn baofs csi");
        let mut d = Driver {
            child: Some(child),
            dir,
            socket,
            spc_dir,
            stderr,
        };
        d.wait_ready().await;
        d
    }

    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("baofs csi exited early ({status}):\n{}", self.log());
            }
            if self.socket.exists() && self.probe_ready().await {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "baofs csi not ready within {DEADLINE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn probe_ready(&self) -> bool {
        let Ok(mut c) = self.identity().await else {
            return false;
        };
        c.probe(ProbeRequest {})
            .await
            .is_ok_and(|r| r.into_inner().ready == Some(true))
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        connect(&self.socket).await
    }

    async fn identity(&self) -> Result<IdentityClient<Channel>, tonic::transport::Error> {
        Ok(IdentityClient::new(self.channel().await?))
    }

    async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await.unwrap())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// A kubelet-style target: the parent exists, `mount` does not.
    fn target(&self, pod_uid: &str, volume: &str) -> PathBuf {
        let parent = self
            .dir
            .path
            .join(format!("pods/{pod_uid}/volumes/kubernetes.io~csi/{volume}"));
        std::fs::create_dir_all(&parent).unwrap();
        parent.join("mount")
    }

    /// SIGTERM, wait for a clean exit, check nothing is left mounted under the test dir.
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        terminate(&mut child);
        let status = wait_exit(&mut child, Duration::from_secs(20));
        let log = self.log();
        assert!(
            status.is_some_and(|s| s.success()),
            "baofs csi did not exit cleanly on SIGTERM ({status:?}):\n{log}"
        );
        let left = mounts_under(&self.dir.path);
        assert!(left.is_empty(), "left mounted after shutdown: {left:?}");
        assert!(!self.socket.exists(), "the socket was not removed");
        log
    }
}

impl Drop for Driver {
    /// Best-effort cleanup when a test failed: stop the process, lazily unmount leftovers.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
            if wait_exit(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            eprintln!("--- baofs csi log ---\n{}", self.log());
        }
        for (mp, _) in mounts_under(&self.dir.path) {
            let _ = Command::new("umount").arg("-l").arg(&mp).status();
        }
    }
}

// -------------------------------------------------------------------------------------------
// Requests

/// Publishes, expecting `code`; checks the message contains every `needle`, and that nothing
/// is mounted at (or left created at) the target.
async fn expect_publish_error(
    node: &mut NodeClient<Channel>,
    req: NodePublishVolumeRequest,
    code: Code,
    needles: &[&str],
) -> String {
    let target = PathBuf::from(&req.target_path);
    let status = node
        .node_publish_volume(req)
        .await
        .expect_err("publish should fail");
    assert_eq!(status.code(), code, "{status:?}");
    for n in needles {
        assert!(
            status.message().contains(n),
            "message should contain '{n}': {}",
            status.message()
        );
    }
    if !target.as_os_str().is_empty() {
        assert!(
            !is_mounted(&target),
            "{} is mounted after a failure",
            target.display()
        );
        assert!(
            !target.exists(),
            "{} was left created after a failure",
            target.display()
        );
    }
    status.message().to_owned()
}

// -------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_node_info_and_capabilities() {
    let Some(_cx) = setup() else { return };
    let d = Driver::start("identity").await;

    let meta = std::fs::symlink_metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");

    let mut id = d.identity().await.unwrap();
    let info = id
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, DRIVER);
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = id
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        caps.capabilities.is_empty(),
        "no controller service: {caps:?}"
    );
    let probe = id.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));

    let mut node = d.node().await;
    let ni = node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ni.node_id, NODE_ID);
    let nc = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let rpcs: Vec<RpcType> = nc
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(CapType::Rpc(r)) => Some(r.r#type()),
            _ => None,
        })
        .collect();
    assert_eq!(rpcs, [RpcType::VolumeMountGroup]);
    let stage = node
        .node_stage_volume(NodeStageVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(stage.code(), Code::Unimplemented);

    // Unknown targets unpublish fine (idempotent).
    let t = d.target("nobody", "v");
    node.node_unpublish_volume(unpublish_request("csi-unknown", &t))
        .await
        .unwrap();
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_read_rotate_republish_unpublish() {
    let Some(cx) = setup() else { return };
    cx.bao.ensure_jwt_auth().await;
    let ns = "shop";
    let pod = Pod::new(ns, "web");
    let (secret, other) = (unique("db"), unique("api"));
    let role = unique("role");
    cx.bao
        .role(
            &role,
            ns,
            "web",
            &[
                format!("secret/data/{secret}"),
                format!("secret/data/{other}"),
            ],
        )
        .await;
    let password = unique("pw-v1");
    cx.bao
        .kv2_put(&secret, json!({"password": password, "user": "app"}))
        .await;
    cx.bao.kv2_put(&other, json!({"key": "api-key-1"})).await;

    let d = Driver::start("flow").await;
    let spc = "shop-secrets";
    write_spc(
        &d.spc_dir,
        ns,
        spc,
        &[("vaultAddress", &cx.bao.addr), ("roleName", &role)],
        &format!(
            "- objectName: password\n  secretPath: secret/data/{secret}\n  secretKey: password\n\
             - objectName: api/key\n  secretPath: secret/data/{other}\n  secretKey: key\n"
        ),
    );
    let mut node = d.node().await;

    // Publish with kubelet's ephemeral volume context, tokens in the volume context, fsGroup.
    let vid = volume_id();
    let target = d.target(&pod.uid, "secrets");
    let token = pod.token();
    let mut req = publish_request(
        &vid,
        &target,
        pod.context(spc, Some(tokens_json(AUDIENCE, &token))),
    );
    req.volume_capability = mount_capability("4321");
    node.node_publish_volume(req).await.unwrap();
    assert!(is_mounted(&target), "target not mounted");
    assert_eq!(
        std::fs::read_to_string(target.join("password")).unwrap(),
        password
    );
    assert_eq!(
        std::fs::read_to_string(target.join("api/key")).unwrap(),
        "api-key-1"
    );
    let meta = std::fs::metadata(target.join("password")).unwrap();
    assert_eq!(meta.gid(), 4321, "files are group-owned by the fsGroup");
    assert_eq!(meta.uid(), 0);
    let fstype = mounts_under(&target)
        .into_iter()
        .find(|(p, _)| p == &target)
        .map(|(_, t)| t)
        .unwrap();
    assert_eq!(fstype, "fuse.baofs");

    // Rotate in OpenBao: the next read sees it.
    let rotated = unique("pw-v2");
    cx.bao
        .kv2_put(&secret, json!({"password": rotated, "user": "app"}))
        .await;
    eventually("the rotated value is visible", DEADLINE, || {
        (std::fs::read_to_string(target.join("password")).ok()? == rotated).then_some(())
    })
    .await;

    // Republish (requiresRepublish) with a fresh token, from the request's secrets this time
    // (Kubernetes >= 1.35): OK, fast, still mounted, still the same values.
    let mut req = publish_request(&vid, &target, pod.context(spc, None));
    let token2 = pod.token();
    req.secrets = [(
        "csi.storage.k8s.io/serviceAccount.tokens".to_owned(),
        tokens_json(AUDIENCE, &token2),
    )]
    .into();
    req.volume_capability = mount_capability("4321");
    // That a republish does not fetch is asserted below (it succeeds with the SPC gone); its
    // duration is printed, not asserted.
    let start = Instant::now();
    node.node_publish_volume(req).await.unwrap();
    eprintln!("republish took {:?}", start.elapsed());
    assert!(is_mounted(&target));
    assert_eq!(
        mounts_under(&target).len(),
        1,
        "republish must not stack mounts"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("password")).unwrap(),
        rotated
    );

    // A republish never fails while the volume is served, even when its SPC is gone and the
    // request carries no token: the last-known values and credentials stay.
    let spc_file = d.spc_dir.join(ns).join(format!("{spc}.yaml"));
    let spc_text = std::fs::read_to_string(&spc_file).unwrap();
    std::fs::remove_file(&spc_file).unwrap();
    node.node_publish_volume(publish_request(&vid, &target, pod.context(spc, None)))
        .await
        .unwrap();
    assert!(is_mounted(&target));
    assert_eq!(
        std::fs::read_to_string(target.join("password")).unwrap(),
        rotated
    );
    std::fs::write(&spc_file, spc_text).unwrap();

    // Rotation keeps working after the republish.
    let rotated3 = unique("pw-v3");
    cx.bao
        .kv2_put(&secret, json!({"password": rotated3, "user": "app"}))
        .await;
    eventually("rotation after republish", DEADLINE, || {
        (std::fs::read_to_string(target.join("password")).ok()? == rotated3).then_some(())
    })
    .await;

    // A different volume on the same target is refused, and the served volume is untouched.
    expect_publish_error_keep_mount(&mut node, &vid, &target, &pod, spc, &token2).await;

    // Several pods publish in parallel.
    let pods: Vec<(String, PathBuf)> = (0..3)
        .map(|i| (volume_id(), d.target(&unique("par"), &format!("s{i}"))))
        .collect();
    let mut calls = Vec::new();
    for (v, t) in &pods {
        let mut n = node.clone();
        let req = publish_request(v, t, pod.context(spc, Some(tokens_json(AUDIENCE, &token2))));
        calls.push(tokio::spawn(
            async move { n.node_publish_volume(req).await },
        ));
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    for (v, t) in &pods {
        assert_eq!(
            std::fs::read_to_string(t.join("password")).unwrap(),
            rotated3
        );
        node.node_unpublish_volume(unpublish_request(v, t))
            .await
            .unwrap();
        assert!(!is_mounted(t));
    }

    // Unpublish: nothing mounted, the target we created is gone, a second unpublish is OK.
    node.node_unpublish_volume(unpublish_request(&vid, &target))
        .await
        .unwrap();
    assert!(!is_mounted(&target), "still mounted after unpublish");
    assert!(
        !target.exists(),
        "the target directory the driver created is left"
    );
    node.node_unpublish_volume(unpublish_request(&vid, &target))
        .await
        .unwrap();

    let log = d.stop();
    for (what, value) in [
        ("token", &token),
        ("second token", &token2),
        ("secret", &password),
        ("rotated secret", &rotated),
        ("rotated secret", &rotated3),
    ] {
        assert!(
            !log.contains(value.as_str()),
            "the {what} appeared in the driver log"
        );
    }
    assert!(log.contains("published"), "{log}");
}

/// A publish of another volume id on a mounted target: AlreadyExists, mount untouched.
async fn expect_publish_error_keep_mount(
    node: &mut NodeClient<Channel>,
    vid: &str,
    target: &Path,
    pod: &Pod,
    spc: &str,
    token: &str,
) {
    let other = volume_id();
    assert_ne!(other, vid);
    let req = publish_request(
        &other,
        target,
        pod.context(spc, Some(tokens_json(AUDIENCE, token))),
    );
    let status = node.node_publish_volume(req).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains(vid), "{}", status.message());
    assert!(is_mounted(target));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_with_upstream_messages() {
    let Some(_cx) = setup() else { return };
    let d = Driver::start("invalid").await;
    let mut node = d.node().await;
    let pod = Pod::new("apps", "web");
    let ctx = || pod.context("some-spc", Some(tokens_json(AUDIENCE, "not-a-real-jwt")));
    let target = d.target(&pod.uid, "v");

    let mut r = publish_request("", &target, ctx());
    r.volume_id.clear();
    expect_publish_error(
        &mut node,
        r,
        Code::InvalidArgument,
        &["Volume ID missing in request"],
    )
    .await;

    let mut r = publish_request(&volume_id(), &target, ctx());
    r.target_path.clear();
    expect_publish_error(
        &mut node,
        r,
        Code::InvalidArgument,
        &["Target path missing in request"],
    )
    .await;

    let mut r = publish_request(&volume_id(), &target, ctx());
    r.volume_capability = None;
    expect_publish_error(
        &mut node,
        r,
        Code::InvalidArgument,
        &["Volume capability missing in request"],
    )
    .await;

    let mut r = publish_request(&volume_id(), &target, ctx());
    r.readonly = false;
    expect_publish_error(
        &mut node,
        r,
        Code::InvalidArgument,
        &["Readonly is not true in request"],
    )
    .await;

    let mut c = ctx();
    c.remove("secretProviderClass");
    let r = publish_request(&volume_id(), &target, c);
    expect_publish_error(
        &mut node,
        r,
        Code::InvalidArgument,
        &["secretProviderClass is not set"],
    )
    .await;

    let r = publish_request(&volume_id(), &target, ctx());
    expect_publish_error(
        &mut node,
        r,
        Code::NotFound,
        &["failed to get secretproviderclass apps/some-spc"],
    )
    .await;

    // Tokens that are not JSON: InvalidArgument, and the message does not quote them.
    let mut c = ctx();
    c.insert(
        "csi.storage.k8s.io/serviceAccount.tokens".into(),
        "{\"openbao\": \"LEAKED-IF-QUOTED\"}".into(),
    );
    write_spc(
        &d.spc_dir,
        "apps",
        "some-spc",
        &[("vaultAddress", "http://127.0.0.1:1"), ("roleName", "r")],
        "- objectName: a\n  secretPath: secret/data/a\n  secretKey: k\n",
    );
    let msg = expect_publish_error(
        &mut node,
        publish_request(&volume_id(), &target, c),
        Code::InvalidArgument,
        &["csi.storage.k8s.io/serviceAccount.tokens"],
    )
    .await;
    assert!(!msg.contains("LEAKED"), "{msg}");

    // No token for the SPC's audience.
    let c = pod.context("some-spc", Some(tokens_json("vault", "x")));
    expect_publish_error(
        &mut node,
        publish_request(&volume_id(), &target, c),
        Code::InvalidArgument,
        &[
            "no service-account token for audience 'openbao'",
            "apps/some-spc",
        ],
    )
    .await;

    // An invalid SPC file: InvalidArgument naming the file.
    let spc_file = d.spc_dir.join("apps/broken.yaml");
    std::fs::write(&spc_file, "apiVersion: v1\nkind: ConfigMap\n").unwrap();
    expect_publish_error(
        &mut node,
        publish_request(
            &volume_id(),
            &target,
            pod.context("broken", Some(tokens_json(AUDIENCE, "x"))),
        ),
        Code::InvalidArgument,
        &["broken.yaml"],
    )
    .await;

    // Unpublish validation.
    let e = node
        .node_unpublish_volume(unpublish_request("", &target))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "Volume ID missing in request")
    );
    let mut r = unpublish_request("v", &target);
    r.target_path.clear();
    let e = node.node_unpublish_volume(r).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "Target path missing in request")
    );

    let log = d.stop();
    assert!(
        !log.contains("LEAKED-IF-QUOTED"),
        "the tokens JSON reached the log"
    );
    assert!(
        log.contains("failed to get secretproviderclass apps/some-spc"),
        "errors returned to kubelet are logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_denied_and_unreachable_map_to_grpc_codes() {
    let Some(cx) = setup() else { return };
    cx.bao.ensure_jwt_auth().await;
    let ns = "bank";
    let pod = Pod::new(ns, "teller");
    let (allowed, forbidden) = (unique("ok"), unique("forbidden"));
    let role = unique("role");
    cx.bao
        .role(&role, ns, "teller", &[format!("secret/data/{allowed}")])
        .await;
    let forbidden_value = unique("vault-of-gold");
    cx.bao
        .kv2_put(&forbidden, json!({"k": forbidden_value}))
        .await;

    let d = Driver::start("bao-errors").await;
    let mut node = d.node().await;
    let token = pod.token();

    // 403 on the read: PermissionDenied naming the SPC, object and path.
    write_spc(
        &d.spc_dir,
        ns,
        "denied",
        &[("vaultAddress", &cx.bao.addr), ("roleName", &role)],
        &format!("- objectName: gold\n  secretPath: secret/data/{forbidden}\n  secretKey: k\n"),
    );
    let target = d.target(&pod.uid, "denied");
    expect_publish_error(
        &mut node,
        publish_request(
            &volume_id(),
            &target,
            pod.context("denied", Some(tokens_json(AUDIENCE, &token))),
        ),
        Code::PermissionDenied,
        &["bank/denied", "gold", &format!("secret/data/{forbidden}")],
    )
    .await;

    // OpenBao unreachable (a closed loopback port): Unavailable after the retry deadline.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("http://127.0.0.1:{closed}");
    write_spc(
        &d.spc_dir,
        ns,
        "down",
        &[("vaultAddress", &addr), ("roleName", &role)],
        &format!("- objectName: a\n  secretPath: secret/data/{allowed}\n  secretKey: k\n"),
    );
    let target = d.target(&pod.uid, "down");
    let start = Instant::now();
    expect_publish_error(
        &mut node,
        publish_request(
            &volume_id(),
            &target,
            pod.context("down", Some(tokens_json(AUDIENCE, &token))),
        ),
        Code::Unavailable,
        &["bank/down", &addr],
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );

    let log = d.stop();
    assert!(
        !log.contains(&token),
        "the token appeared in the driver log"
    );
    assert!(
        !log.contains(&forbidden_value),
        "a value appeared in the driver log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_refuses_bad_configuration() {
    let Some(_cx) = setup() else { return };
    let dir = TempDir::new("startup");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_baofs"))
            .args(args)
            .arg("--state-dir")
            .arg(dir.path.join("state"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let sock = format!("unix://{}/csi.sock", dir.path.display());
    let err = run(&["csi", "--nodeid", "n", "--endpoint", &sock]);
    assert!(
        err.contains("in-cluster") && err.contains("--kubeconfig") && err.contains("--spc-dir"),
        "{err}"
    );
    // A regular file where the socket goes is never removed.
    let file = dir.path.join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let spc_dir = dir.path.join("spc");
    std::fs::create_dir_all(&spc_dir).unwrap();
    let err = run(&[
        "csi",
        "--nodeid",
        "n",
        "--endpoint",
        &format!("unix://{}", file.display()),
        "--spc-dir",
        spc_dir.to_str().unwrap(),
    ]);
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    assert!(
        mounts_under(&dir.path).is_empty(),
        "a failed start left a mount"
    );
}

/// Migration and crash recovery: NodeUnpublishVolume on a target that this driver did not
/// mount (the old Secrets Store CSI Driver's tmpfs) unmounts it, as upstream does, so kubelet
/// can finish tearing the pod down.
#[tokio::test]
async fn unpublish_unmounts_what_another_driver_left() {
    let Some(_cx) = setup() else { return };
    let d = Driver::start("foreign").await;
    let target = d.dir.path.join("pods/old/mount");
    std::fs::create_dir_all(&target).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&target)
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs");
    assert!(is_mounted(&target));
    let mut node = d.node().await;
    node.node_unpublish_volume(unpublish_request("csi-old-driver-volume", &target))
        .await
        .unwrap();
    assert!(!is_mounted(&target), "the foreign tmpfs is still mounted");
    // Nothing there any more: a second unpublish is a no-op.
    node.node_unpublish_volume(unpublish_request("csi-old-driver-volume", &target))
        .await
        .unwrap();
}
