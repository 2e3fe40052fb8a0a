//! OpenBao namespaces (issue 3): `<P>Namespace` sends `X-Vault-Namespace` on the login and on
//! every read. A secret in namespace `team-a` is read only with `baoNamespace: team-a`, and a
//! JWT auth method inside the namespace is logged in to there.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{
    Bao, MountOpts, Mounted, mount_expect_failure, obj, setup, spc_yaml_with, unique,
};
use crate::jwt::{AUDIENCE, jwt_opts, keys, sa_token};

const NAMESPACE: &str = "team-a";

/// `method path` in the root namespace, tolerating "already exists" answers.
fn idempotent(bao: &Bao, method: Method, path: &str, body: Value) {
    let (status, value) = bao.call(method.clone(), path, Some(&body));
    let text = value.to_string();
    assert!(
        (200..300).contains(&status)
            || text.contains("already exists")
            || text.contains("already in use"),
        "OpenBao {method} {path} answered {status}: {text}"
    );
}

/// Namespace `team-a` with KV v1 at `kv-ns/` and a JWT auth method at `jwt-ns/` trusting the
/// test key (namespaced paths: `team-a/sys/...`).
fn ensure_namespace(bao: &Bao) {
    idempotent(
        bao,
        Method::POST,
        &format!("sys/namespaces/{NAMESPACE}"),
        json!({}),
    );
    idempotent(
        bao,
        Method::POST,
        &format!("{NAMESPACE}/sys/mounts/kv-ns"),
        json!({"type": "kv", "options": {"version": "1"}}),
    );
    idempotent(
        bao,
        Method::POST,
        &format!("{NAMESPACE}/sys/auth/jwt-ns"),
        json!({"type": "jwt"}),
    );
    bao.ok(
        Method::POST,
        &format!("{NAMESPACE}/auth/jwt-ns/config"),
        Some(&json!({"jwt_validation_pubkeys": [keys().public_pem]})),
    );
}

#[test]
fn namespace_isolates_reads_and_logins() {
    let Some(cx) = setup() else { return };
    ensure_namespace(&cx.bao);
    let name = unique("ns");
    let value = unique("ns-value");
    cx.bao.ok(
        Method::POST,
        &format!("{NAMESPACE}/kv-ns/{name}"),
        Some(&json!({ "password": value })),
    );
    let path = format!("kv-ns/{name}");
    let objects = [obj("password", &path, Some("password"))];

    // With the namespace (root token): read.
    let spc = spc_yaml_with(
        &unique("ns"),
        &cx.bao.addr,
        "ns",
        &[("baoNamespace", NAMESPACE)],
        &objects,
    );
    let m = Mounted::start(MountOpts::new(&cx, spc));
    assert_eq!(m.read_string("password"), value);
    m.stop();

    // Without it, the path does not exist in the root namespace.
    let spc = spc_yaml_with(&unique("ns"), &cx.bao.addr, "ns", &[], &objects);
    let f = mount_expect_failure("no-namespace", MountOpts::new(&cx, spc));
    assert!(
        f.stderr.contains(&path) && f.stderr.contains("HTTP 404"),
        "stderr should name the path and the 404:\n{}",
        f.stderr
    );
    assert!(!f.stderr.contains(&value));

    // A JWT login inside the namespace, then a read there.
    let role = unique("nsrole");
    cx.bao.ok(
        Method::PUT,
        &format!("{NAMESPACE}/sys/policies/acl/{role}"),
        Some(&json!({ "policy": format!("path \"{path}\" {{ capabilities = [\"read\"] }}\n") })),
    );
    cx.bao.ok(
        Method::POST,
        &format!("{NAMESPACE}/auth/jwt-ns/role/{role}"),
        Some(&json!({
            "role_type": "jwt",
            "bound_audiences": [AUDIENCE],
            "user_claim": "sub",
            "bound_subject": "system:serviceaccount:team-a:app",
            "token_policies": [role],
            "token_ttl": "1h",
        })),
    );
    let spc = spc_yaml_with(
        &unique("ns"),
        &cx.bao.addr,
        &role,
        &[
            ("vaultNamespace", NAMESPACE),
            ("vaultAuthMountPath", "jwt-ns"),
        ],
        &objects,
    );
    let jwt = sa_token("team-a", "app");
    let m = Mounted::start(jwt_opts(&cx, spc.clone(), jwt.clone()));
    assert_eq!(m.read_string("password"), value);
    assert!(!m.stderr().contains(&jwt));
    m.stop();

    // The same login without the namespace: the auth mount does not exist there.
    let spc = spc.replace(&format!("    vaultNamespace: \"{NAMESPACE}\"\n"), "");
    let f = mount_expect_failure("jwt-no-namespace", jwt_opts(&cx, spc, jwt.clone()));
    assert!(
        f.stderr.contains("login") && f.stderr.contains("jwt-ns"),
        "stderr should name the failed login:\n{}",
        f.stderr
    );
    assert!(!f.stderr.contains(&jwt));
}
