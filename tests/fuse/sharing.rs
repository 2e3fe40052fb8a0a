//! Reads and logins shared across volumes (issue 6), counted in OpenBao's own audit log: the
//! second server (`peers_bao_tls_start`) has a file audit device. The provider and the
//! `Publisher` run in this process, as `baofs csi` runs them; every test uses its own auth
//! mount and secret paths, so the counts are its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baofs::observer::NoObserver;
use baofs::provider::openbao::OpenBaoConfig;
use baofs::provider::{FetchedObject, OpenBaoProvider, Provider, ProviderError};
use baofs::publisher::{Publisher, PublisherConfig};
use baofs::secret::SecretString;
use baofs::spc::SecretProviderClass;
use baofs::volume::{Credentials, Ownership, PodInfo, VolumeSpec};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Bao, TempDir, force_unmount_under, mounts_under, poll_until, setup, unique};
use crate::jwt::{AUDIENCE, ensure_jwt_auth, sign_jwt};
use crate::tls::test_env;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The audited server, its audit log, and a fresh jwt auth mount on it.
struct Env {
    bao: Bao,
    audit: String,
    mount: String,
}

fn env() -> Env {
    let bao = Bao::new(&test_env("BAOFS_TEST_BAO2_ADDR"), "root");
    let mount = unique("jwt-share");
    ensure_jwt_auth(&bao, &mount);
    Env {
        bao,
        audit: test_env("BAOFS_TEST_BAO2_AUDIT_LOG"),
        mount,
    }
}

impl Env {
    /// Audit `request` entries for `path`.
    fn requests(&self, path: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == "request" && e["request"]["path"] == path)
            .collect()
    }

    fn logins(&self) -> usize {
        self.requests(&format!("auth/{}/login", self.mount)).len()
    }

    /// Reads (not the test's own writes) of `secret/data/<name>`.
    fn reads(&self, name: &str) -> usize {
        self.read_requests(name).len()
    }

    fn read_requests(&self, name: &str) -> Vec<Value> {
        self.requests(&format!("secret/data/{name}"))
            .into_iter()
            .filter(|e| e["request"]["operation"] == "read")
            .collect()
    }

    /// A KV v2 secret `{"v": <unique value>}`; returns the value.
    fn secret(&self, name: &str) -> String {
        let value = unique("shared-value");
        self.bao.kv2_put(name, json!({ "v": value }));
        value
    }

    fn policy(&self, name: &str, paths: &[&str]) {
        let policy: String = paths
            .iter()
            .map(|p| format!("path \"secret/data/{p}\" {{ capabilities = [\"read\"] }}\n"))
            .collect();
        self.bao.ok(
            Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(&json!({ "policy": policy })),
        );
    }

    fn role(&self, role: &str, extra: Value) {
        let mut body = json!({
            "role_type": "jwt",
            "bound_audiences": [AUDIENCE],
            "user_claim": "sub",
        });
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        self.bao.ok(
            Method::POST,
            &format!("auth/{}/role/{role}", self.mount),
            Some(&body),
        );
    }

    /// A volume of `objects` (secret names, object name = secret name) with `credentials`.
    fn volume(
        &self,
        id: &str,
        role: &str,
        objects: &[&str],
        credentials: Credentials,
    ) -> VolumeSpec {
        let objects: String = objects
            .iter()
            .map(|o| {
                format!("      - {{objectName: {o}, secretPath: secret/data/{o}, secretKey: v}}\n")
            })
            .collect();
        let yaml = format!(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\n\
             metadata: {{name: shared, namespace: apps}}\nspec:\n  provider: openbao\n  parameters:\n\
             \x20   vaultAddress: '{}'\n    roleName: {role}\n    vaultKubernetesMountPath: {}\n\
             \x20   objects: |\n{objects}",
            self.bao.addr, self.mount
        );
        VolumeSpec {
            id: id.to_owned(),
            spc: SecretProviderClass::from_yaml(&yaml).expect("SPC"),
            pod: PodInfo::default(),
            credentials,
            ownership: Ownership::default(),
        }
    }
}

/// A service-account token of `apps/<sa>` for pod `pod`, valid for an hour.
fn pod_jwt(sa: &str, pod: &str) -> Credentials {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    Credentials::Jwt(SecretString::new(sign_jwt(&json!({
        "aud": [AUDIENCE],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:apps:{sa}"),
        "kubernetes.io": {
            "namespace": "apps",
            "pod": {"name": pod, "uid": unique("uid")},
            "serviceaccount": {"name": sa, "uid": "6a1f0c47-3c4e-4d39-8d8e-6f1a2b3c4d5e"}
        }
    }))))
}

fn provider(share_window: Duration) -> Arc<OpenBaoProvider> {
    Arc::new(
        OpenBaoProvider::new(OpenBaoConfig {
            share_window,
            retry_deadline: Duration::from_secs(5),
            ..OpenBaoConfig::default()
        })
        .expect("provider"),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

fn value_of(objects: &[FetchedObject], name: &str) -> String {
    let o = objects
        .iter()
        .find(|o| o.path.to_string() == name)
        .unwrap_or_else(|| panic!("object {name} missing"));
    String::from_utf8_lossy(o.value.expose()).into_owned()
}

/// Fetches every volume at once (as a poll does), in this order.
fn fetch_all(
    rt: &tokio::runtime::Runtime,
    p: &Arc<OpenBaoProvider>,
    specs: &[VolumeSpec],
) -> Vec<Result<Vec<FetchedObject>, ProviderError>> {
    rt.block_on(async {
        let tasks: Vec<_> = specs
            .iter()
            .cloned()
            .map(|s| {
                let p = Arc::clone(p);
                tokio::spawn(async move { p.fetch(&s).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("join"));
        }
        out
    })
}

/// Lazily unmounts everything below its directory when dropped (a failed test's leftovers).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        force_unmount_under(&self.0);
    }
}

#[test]
fn different_service_accounts_never_share_a_login_or_a_value() {
    if setup().is_none() {
        return;
    }
    let env = env();
    let name = unique("share-ids");
    let value = env.secret(&name);
    // One role admits both service accounts with no access of its own; only `allowed`'s
    // identity (entity) carries the policy that reads the secret.
    let policy = unique("share-ids-pol");
    env.policy(&policy, &[&name]);
    let role = unique("shareids");
    env.role(
        &role,
        json!({"bound_claims": {"sub": [
            "system:serviceaccount:apps:allowed",
            "system:serviceaccount:apps:denied"
        ]}, "token_ttl": "1h"}),
    );
    let auths = env.bao.ok(Method::GET, "sys/auth", None);
    let key = format!("{}/", env.mount);
    let accessor = auths["data"][&key]["accessor"]
        .as_str()
        .or_else(|| auths[&key]["accessor"].as_str())
        .expect("mount accessor")
        .to_owned();
    let entity = env.bao.ok(
        Method::POST,
        "identity/entity",
        Some(&json!({"name": unique("allowed-entity"), "policies": [policy]})),
    );
    let entity_id = entity["data"]["id"].as_str().expect("entity id").to_owned();
    env.bao.ok(
        Method::POST,
        "identity/entity-alias",
        Some(&json!({
            "name": "system:serviceaccount:apps:allowed",
            "canonical_id": entity_id,
            "mount_accessor": accessor,
        })),
    );

    let rt = runtime();
    let p = provider(Duration::from_secs(60));
    let allowed = env.volume("vol-allowed", &role, &[&name], pod_jwt("allowed", "a-1"));
    let denied = env.volume("vol-denied", &role, &[&name], pod_jwt("denied", "d-1"));

    let got = rt.block_on(p.fetch(&allowed)).expect("allowed reads");
    assert_eq!(value_of(&got, &name), value);
    assert_eq!((env.logins(), env.reads(&name)), (1, 1));

    // Same path, another service account: its own login and its own read, refused.
    let e = rt.block_on(p.fetch(&denied)).expect_err("denied must fail");
    assert!(e.is_permission_denied(), "{e}");
    assert!(!e.to_string().contains(&value));
    assert_eq!((env.logins(), env.reads(&name)), (2, 2));
    let read_tokens: std::collections::HashSet<String> = env
        .read_requests(&name)
        .iter()
        .map(|e| e["auth"]["client_token"].to_string())
        .collect();
    assert_eq!(read_tokens.len(), 2, "the two reads used two tokens");

    // The allowed volume still reads, from the shared value (no new request).
    let got = rt.block_on(p.fetch(&allowed)).expect("allowed again");
    assert_eq!(value_of(&got, &name), value);
    assert_eq!((env.logins(), env.reads(&name)), (2, 2));

    // A JWT claiming the allowed subject but not signed by the cluster: OpenBao refuses it,
    // and the cached token and value of that subject are not handed to it.
    let Credentials::Jwt(real) = pod_jwt("allowed", "a-2") else {
        unreachable!()
    };
    let parts: Vec<&str> = real.expose().split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    claims["kubernetes.io"]["pod"]["name"] = json!("forged");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let forged = env.volume(
        "vol-forged",
        &role,
        &[&name],
        Credentials::Jwt(SecretString::new(forged)),
    );
    let e = rt.block_on(p.fetch(&forged)).expect_err("forged must fail");
    assert!(e.is_permission_denied(), "{e}");
    assert_eq!((env.logins(), env.reads(&name)), (3, 2));
}

#[test]
fn volumes_of_one_identity_share_one_read_per_poll_and_one_token() {
    if setup().is_none() {
        return;
    }
    let env = env();
    let (a, b) = (unique("share-poll-a"), unique("share-poll-b"));
    let (va, vb) = (env.secret(&a), env.secret(&b));
    let role = unique("sharepoll");
    env.policy(&role, &[&a, &b]);
    env.role(
        &role,
        json!({"bound_subject": "system:serviceaccount:apps:web", "token_policies": [role], "token_ttl": "1h"}),
    );
    let rt = runtime();
    let window = Duration::from_millis(1500);
    let p = provider(window);
    // Five pods of one service account: five distinct JWTs, one identity.
    let specs: Vec<VolumeSpec> = (0..5)
        .map(|i| {
            env.volume(
                &format!("vol-{i}"),
                &role,
                &[&a, &b],
                pod_jwt("web", &format!("web-{i}")),
            )
        })
        .collect();

    for r in fetch_all(&rt, &p, &specs) {
        let got = r.expect("fetch");
        assert_eq!(
            (value_of(&got, &a), value_of(&got, &b)),
            (va.clone(), vb.clone())
        );
    }
    // Each JWT proves itself to OpenBao once; the reads are shared.
    assert_eq!(
        env.logins(),
        5,
        "each pod's JWT is accepted by OpenBao once"
    );
    assert_eq!((env.reads(&a), env.reads(&b)), (1, 1));
    let first = Instant::now();

    // The next poll, once the share window is over: one read per secret, no login.
    poll_until("the share window to pass", Duration::from_secs(10), || {
        (first.elapsed() > window).then_some(())
    });
    for r in fetch_all(&rt, &p, &specs) {
        r.expect("second poll");
    }
    assert_eq!((env.reads(&a), env.reads(&b)), (2, 2));
    assert_eq!(env.logins(), 5, "no login while the token is valid");
}

#[test]
fn an_expiring_login_token_is_replaced_by_a_new_login() {
    if setup().is_none() {
        return;
    }
    let env = env();
    let name = unique("share-expiry");
    let value = env.secret(&name);
    let role = unique("shareexp");
    env.policy(&role, &[&name]);
    // Batch tokens are not renewable: the cache must log in again before the 8 s run out.
    env.role(
        &role,
        json!({"bound_subject": "system:serviceaccount:apps:short", "token_policies": [role],
               "token_type": "batch", "token_ttl": "8s"}),
    );
    let rt = runtime();
    let p = provider(Duration::ZERO);
    let spec = env.volume("vol-exp", &role, &[&name], pod_jwt("short", "short-1"));
    let got = rt.block_on(p.fetch(&spec)).expect("first fetch");
    assert_eq!(value_of(&got, &name), value);
    assert_eq!(env.logins(), 1);
    poll_until("a second login", Duration::from_secs(30), || {
        let got = rt
            .block_on(p.fetch(&spec))
            .expect("fetch with a live token");
        assert_eq!(value_of(&got, &name), value);
        (env.logins() >= 2).then_some(())
    });
    let tokens: std::collections::HashSet<String> = env
        .read_requests(&name)
        .iter()
        .map(|e| e["auth"]["client_token"].to_string())
        .collect();
    assert!(tokens.len() >= 2, "reads went on with the new token");
    // No read was refused on the way (the token was replaced before it expired).
    let refused = std::fs::read_to_string(&env.audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["type"] == "response"
                && e["request"]["path"] == format!("secret/data/{name}")
                && e["request"]["operation"] == "read"
                && !e["error"].is_null()
        })
        .count();
    assert_eq!(refused, 0);
}

#[test]
fn two_hundred_concurrent_publishes_make_one_read_per_object() {
    if setup().is_none() {
        return;
    }
    let env = env();
    let names: Vec<String> = (0..3).map(|i| unique(&format!("share-pub-{i}"))).collect();
    let values: Vec<String> = names.iter().map(|n| env.secret(n)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let role = unique("sharepub");
    env.policy(&role, &refs);
    env.role(
        &role,
        json!({"bound_subject": "system:serviceaccount:apps:fleet", "token_policies": [role], "token_ttl": "1h"}),
    );
    let work = TempDir::new("share-publish");
    // Whatever happens below, nothing stays mounted.
    let _unmount = Unmount(work.path().to_path_buf());
    let targets = work.subdir("t");
    let rt = runtime();
    let p = provider(Duration::from_secs(30));
    let publisher = rt
        .block_on(async {
            Publisher::start(
                PublisherConfig {
                    state_dir: work.subdir("state"),
                    rotation: None,
                    fuse_threads: 2,
                    create_missing_targets: true,
                },
                p as Arc<dyn Provider>,
                Arc::new(NoObserver),
            )
        })
        .expect("publisher");
    // One pod's token for all (the JWT proves itself once; reads are the point here).
    let jwt = pod_jwt("fleet", "fleet-0");
    const N: usize = 200;
    let target = |i: usize| -> PathBuf { targets.join(format!("v{i}")) };
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..N)
            .map(|i| {
                let publisher = Arc::clone(&publisher);
                let spec = env.volume(&format!("csi-{i:03}"), &role, &refs, jwt.clone());
                let t = target(i);
                tokio::spawn(async move { publisher.publish(spec, &t).await.map(|_| ()) })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("join"));
        }
        out
    });
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(failed.is_empty(), "publishes failed: {failed:?}");
    for i in [0, N / 2, N - 1] {
        for (n, v) in names.iter().zip(&values) {
            let got = std::fs::read_to_string(target(i).join(n)).expect("read published file");
            assert_eq!(&got, v);
        }
    }
    for n in &names {
        assert_eq!(env.reads(n), 1, "one read of {n} for {N} publishes");
    }
    assert_eq!(env.logins(), 1);
    rt.block_on(async {
        for i in 0..N {
            publisher.unpublish(&target(i)).await.expect("unpublish");
        }
        publisher.shutdown().await;
    });
    assert!(mounts_under(work.path()).is_empty(), "mounts left behind");
}
