//! Test 6: JWT login (the Kubernetes-auth code path) with a ServiceAccount-shaped RS256 token,
//! including the seed harbor SecretProviderClass verbatim.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{
    Bao, Ctx, MountOpts, Mounted, TempDir, mount_expect_failure, obj, setup, spc_yaml_with, unique,
};

/// The audience our test roles bind and our tokens carry.
pub(crate) const AUDIENCE: &str = "openbao";

/// The RSA key pair the test "cluster" signs service-account tokens with (one per process),
/// kept in memory; files exist only while `openssl` needs them.
pub(crate) struct Keys {
    private_pem: String,
    pub(crate) public_pem: String,
}

pub(crate) fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = TempDir::new("jwt-keys");
        let private = dir.path().join("sa.key");
        let public = dir.path().join("sa.pub");
        run_openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            path_str(&private),
        ]);
        run_openssl(&[
            "pkey",
            "-in",
            path_str(&private),
            "-pubout",
            "-out",
            path_str(&public),
        ]);
        Keys {
            private_pem: std::fs::read_to_string(&private).expect("read private key"),
            public_pem: std::fs::read_to_string(&public).expect("read public key"),
        }
    })
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run_openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (scripts/peers.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Signs `claims` as an RS256 JWT with the test key, using the `openssl` CLI.
pub(crate) fn sign_jwt(claims: &Value) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "baofs-test"});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let dir = TempDir::new("jwt-sign");
    let key = dir.write("sa.key", &keys().private_pem);
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign", path_str(&key), "-binary"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl dgst");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(signing_input.as_bytes())
        .expect("write signing input");
    let out = child.wait_with_output().expect("openssl dgst");
    assert!(
        out.status.success(),
        "openssl dgst failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
}

/// A Kubernetes service-account token for `namespace/sa`, valid for an hour.
pub(crate) fn sa_token(namespace: &str, sa: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    sign_jwt(&json!({
        "aud": [AUDIENCE],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": format!("{sa}-pod"), "uid": "0b9a2d6e-6f1c-4c3e-9a55-1f2e3d4c5b6a"},
            "serviceaccount": {"name": sa, "uid": "6a1f0c47-3c4e-4d39-8d8e-6f1a2b3c4d5e"}
        }
    }))
}

/// Enables (idempotently) a `jwt` auth method at `mount` that trusts the test key.
pub(crate) fn ensure_jwt_auth(bao: &Bao, mount: &str) {
    // Serialise the enable-or-reuse check among this process's tests.
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let auths = bao.ok(Method::GET, "sys/auth", None);
    let key = format!("{mount}/");
    let existing = auths
        .get("data")
        .and_then(|d| d.get(&key))
        .or_else(|| auths.get(&key));
    match existing.and_then(|a| a.get("type")).and_then(Value::as_str) {
        Some("jwt") => {}
        Some(other) => panic!("auth mount {mount}/ exists with type {other}, expected jwt"),
        None => {
            bao.ok(
                Method::POST,
                &format!("sys/auth/{mount}"),
                Some(&json!({"type": "jwt"})),
            );
        }
    }
    bao.ok(
        Method::POST,
        &format!("auth/{mount}/config"),
        Some(&json!({"jwt_validation_pubkeys": [keys().public_pem]})),
    );
}

/// Creates policy `role` (read `secret_path`) and a role `role` at `mount` bound to
/// `namespace/sa`.
fn ensure_role(bao: &Bao, mount: &str, role: &str, namespace: &str, sa: &str, secret_path: &str) {
    let policy = format!("path \"{secret_path}\" {{ capabilities = [\"read\"] }}\n");
    bao.ok(
        Method::PUT,
        &format!("sys/policies/acl/{role}"),
        Some(&json!({ "policy": policy })),
    );
    bao.ok(
        Method::POST,
        &format!("auth/{mount}/role/{role}"),
        Some(&json!({
            "role_type": "jwt",
            "bound_audiences": [AUDIENCE],
            "user_claim": "sub",
            "bound_subject": format!("system:serviceaccount:{namespace}:{sa}"),
            "token_policies": [role],
            "token_ttl": "1h",
        })),
    );
}

/// The seed harbor SPC: `examples/harbor-spc.yaml` if present, else the seed text, with only
/// `vaultAddress` pointed at the test server.
fn harbor_spc(addr: &str) -> String {
    const SEED: &str = r#"apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: harbor-secrets
  namespace: harbor
spec:
  provider: openbao
  parameters:
    vaultAddress: http://openbao.openbao.svc.cluster.local:8200
    roleName: harbor
    objects: |
      - objectName: "HARBOR_ADMIN_PASSWORD"
        secretPath: "secret/data/harbor"
        secretKey: "HARBOR_ADMIN_PASSWORD"
  secretObjects:
    - secretName: harbor-admin
      type: Opaque
      data:
        - objectName: HARBOR_ADMIN_PASSWORD
          key: HARBOR_ADMIN_PASSWORD
"#;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/harbor-spc.yaml");
    let text = std::fs::read_to_string(&example).unwrap_or_else(|_| SEED.to_string());
    let mut replaced = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("vaultAddress:") && !l.trim_start().starts_with('#') {
                replaced += 1;
                let indent = &l[..l.len() - t.len()];
                format!("{indent}vaultAddress: {addr}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_eq!(
        replaced, 1,
        "harbor SPC must have exactly one vaultAddress line"
    );
    out.join("\n") + "\n"
}

pub(crate) fn jwt_opts(cx: &Ctx, spc: String, jwt: String) -> MountOpts {
    let mut o = MountOpts::new(cx, spc);
    o.token = None;
    o.jwt = Some(jwt);
    o
}

#[test]
fn harbor_seed_spc_with_jwt_login() {
    let Some(cx) = setup() else { return };
    ensure_jwt_auth(&cx.bao, "kubernetes");
    ensure_role(
        &cx.bao,
        "kubernetes",
        "harbor",
        "harbor",
        "harbor",
        "secret/data/harbor",
    );
    let password = unique("Harbor12345");
    cx.bao
        .kv2_put("harbor", json!({ "HARBOR_ADMIN_PASSWORD": password }));
    let jwt = sa_token("harbor", "harbor");
    let m = Mounted::start(jwt_opts(&cx, harbor_spc(&cx.bao.addr), jwt.clone()));
    assert_eq!(m.read_string("HARBOR_ADMIN_PASSWORD"), password);
    let stderr = m.stderr();
    assert!(!stderr.contains(&jwt), "the JWT appeared on stderr");
    assert!(!stderr.contains(&password), "the secret appeared on stderr");
    m.stop();
}

#[test]
fn jwt_login_at_custom_auth_mount() {
    let Some(cx) = setup() else { return };
    let mount = "baofs-jwt";
    let role = unique("jwtrole");
    let name = unique("jwtsecret");
    ensure_jwt_auth(&cx.bao, mount);
    ensure_role(
        &cx.bao,
        mount,
        &role,
        "apps",
        "web",
        &format!("secret/data/{name}"),
    );
    cx.bao.kv2_put(&name, json!({"token": "jwt-served"}));
    for param in ["vaultKubernetesMountPath", "vaultAuthMountPath"] {
        let spc = spc_yaml_with(
            &unique("jwt"),
            &cx.bao.addr,
            &role,
            &[(param, mount)],
            &[obj("token", &format!("secret/data/{name}"), Some("token"))],
        );
        let m = Mounted::start(jwt_opts(&cx, spc, sa_token("apps", "web")));
        assert_eq!(m.read_string("token"), "jwt-served", "with {param}");
        m.stop();
    }
}

#[test]
fn jwt_for_wrong_service_account_is_refused() {
    let Some(cx) = setup() else { return };
    let mount = "baofs-jwt";
    let role = unique("jwtdeny");
    let name = unique("jwtdeny");
    ensure_jwt_auth(&cx.bao, mount);
    ensure_role(
        &cx.bao,
        mount,
        &role,
        "apps",
        "web",
        &format!("secret/data/{name}"),
    );
    let secret = unique("must-not-leak");
    cx.bao.kv2_put(&name, json!({ "k": secret }));
    let spc = spc_yaml_with(
        &unique("jwtdeny"),
        &cx.bao.addr,
        &role,
        &[("vaultKubernetesMountPath", mount)],
        &[obj("k", &format!("secret/data/{name}"), Some("k"))],
    );
    let jwt = sa_token("apps", "intruder");
    let f = mount_expect_failure("jwt-wrong-sa", jwt_opts(&cx, spc, jwt.clone()));
    assert!(!f.stderr.contains(&jwt), "the JWT appeared on stderr");
    assert!(!f.stderr.contains(&secret), "the secret appeared on stderr");
    assert!(
        f.stderr.contains(&role) || f.stderr.contains(mount) || f.stderr.contains("login"),
        "stderr should name the role, auth mount or login: {}",
        f.stderr
    );
}
