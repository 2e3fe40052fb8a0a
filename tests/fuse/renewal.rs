//! Login-token renewal (issue 3), seen from OpenBao's side: the second server (started by
//! `scripts/test.sh`) has a file audit device; a JWT role issues renewable 6 s tokens, baofs
//! polls every second, and the audit log must show `auth/token/renew-self` calls made with the
//! role's token while the role's login happens exactly once.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Mounted, obj, poll_until, setup, spc_yaml_with, unique};
use crate::jwt::{AUDIENCE, ensure_jwt_auth, jwt_opts, sa_token};
use crate::tls::{test_env, tls_env};

/// Audit entries of type `request` whose `request.path` is `path`, as parsed JSON.
fn audit_requests(log: &str, path: &str) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "request" && e["request"]["path"] == path)
        .collect()
}

fn has_policy(entry: &Value, policy: &str) -> bool {
    entry["auth"]["policies"]
        .as_array()
        .is_some_and(|p| p.iter().any(|x| x == policy))
}

#[test]
fn renewable_login_token_is_renewed_not_replaced() {
    let Some(cx) = setup() else { return };
    let env = tls_env();
    let audit = test_env("BAOFS_TEST_BAO2_AUDIT_LOG");
    let mount = unique("jwt-renew");
    let role = unique("renewrole");
    let name = unique("renew");
    ensure_jwt_auth(&env.bao, &mount);
    env.bao.ok(
        Method::PUT,
        &format!("sys/policies/acl/{role}"),
        Some(&json!({
            "policy": format!("path \"secret/data/{name}\" {{ capabilities = [\"read\"] }}\n")
        })),
    );
    env.bao.ok(
        Method::POST,
        &format!("auth/{mount}/role/{role}"),
        Some(&json!({
            "role_type": "jwt",
            "bound_audiences": [AUDIENCE],
            "user_claim": "sub",
            "bound_subject": "system:serviceaccount:apps:renewer",
            "token_policies": [role],
            "token_ttl": "6s",
            "token_max_ttl": "1h",
        })),
    );
    let value = unique("renewed-value");
    env.bao.kv2_put(&name, json!({ "v": value }));
    let spc = spc_yaml_with(
        &unique("renew"),
        &env.bao.addr,
        &role,
        &[("vaultAuthMountPath", &mount)],
        &[obj("v", &format!("secret/data/{name}"), Some("v"))],
    );
    let m = Mounted::start(jwt_opts(&cx, spc, sa_token("apps", "renewer")).interval("1s"));
    assert_eq!(m.read_string("v"), value);

    // Two renewals take the token past its first 6 s lease.
    let renewals = || {
        audit_requests(&audit, "auth/token/renew-self")
            .into_iter()
            .filter(|e| has_policy(e, &role))
            .count()
    };
    poll_until(
        "two renew-self calls in the audit log",
        Duration::from_secs(40),
        || (renewals() >= 2).then_some(()),
    );
    let login_path = format!("auth/{mount}/login");
    assert_eq!(
        audit_requests(&audit, &login_path).len(),
        1,
        "one login, then renewals"
    );
    assert_eq!(m.read_string("v"), value);
    assert!(m.stderr().contains("renewed the OpenBao login token"));
    m.stop();
}
