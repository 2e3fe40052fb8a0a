//! Unit tests of the OpenBao provider: pure helpers, and the HTTP flow against a scripted
//! stand-in server (a mock, for unit tests only; the real server is exercised in tests/).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::*;
use crate::spc::SecretProviderClass;
use crate::volume::{Ownership, PodInfo};

// ----- pure helpers ----------------------------------------------------------------------------

#[test]
fn api_url_building() {
    let base = parse_address("s", "http://127.0.0.1:8200").expect("ok");
    assert_eq!(
        api_url(&base, "secret/data/app", Some("version=2")).as_str(),
        "http://127.0.0.1:8200/v1/secret/data/app?version=2"
    );
    let prefixed = parse_address("s", "https://bao.example/proxy/").expect("ok");
    assert_eq!(
        api_url(&prefixed, "auth/k8s/c1/login", None).as_str(),
        "https://bao.example/proxy/v1/auth/k8s/c1/login"
    );
    assert_eq!(
        api_url(&base, "kv/a b#c?d", None).as_str(),
        "http://127.0.0.1:8200/v1/kv/a%20b%23c%3Fd"
    );
}

#[test]
fn address_validation() {
    for (addr, why) in [
        ("unix:///var/run/agent.sock", "http or https"),
        ("127.0.0.1:8200", "http:// or https://"),
        ("http://user:pw@host:8200", "credentials"),
        ("http://host:8200/?x=1", "query"),
        ("http://", "empty host"),
    ] {
        let e = parse_address("ns/spc", addr).expect_err(addr).to_string();
        assert!(e.contains(why) && e.contains("ns/spc"), "{addr}: {e}");
        assert!(!e.contains("pw@"), "{e}");
    }
}

#[test]
fn login_response_parsing() {
    let resp = json!({"request_id": "r", "auth": {"client_token": "s.abc", "accessor": "x",
        "policies": ["p"], "lease_duration": 2764800, "renewable": true}});
    let login = parse_login(resp).expect("ok");
    assert_eq!(login.token.expose(), "s.abc");
    assert_eq!(login.lease, Duration::from_secs(2_764_800));
    assert!(login.renewable);
    assert!(matches!(
        parse_login(json!({"auth": null})),
        Err(Cause::InvalidResponse(_))
    ));
    assert!(matches!(
        parse_login(json!({"auth": {"client_token": ""}})),
        Err(Cause::InvalidResponse(_))
    ));
}

#[test]
fn errors_text_is_one_bounded_line() {
    let body = json!({"errors": ["1 error occurred:\n\t* permission denied\n\n", "second"]});
    assert_eq!(
        errors_text(&body),
        "1 error occurred: * permission denied; second"
    );
    let long = json!({"errors": ["é".repeat(1000)]});
    assert!(errors_text(&long).len() <= MAX_ERROR_TEXT + 3);
    assert_eq!(errors_text(&json!({"errors": []})), "");
    assert_eq!(errors_text(&Value::Null), "");
}

#[test]
fn cause_display_and_classes() {
    let c = Cause::Status {
        status: 403,
        errors: "permission denied".into(),
    };
    assert_eq!(c.to_string(), "HTTP 403 Forbidden: permission denied");
    assert!(!c.is_retryable());
    let sealed = Cause::Status {
        status: 503,
        errors: "Vault is sealed".into(),
    };
    assert!(sealed.is_retryable());
    let gave_up = Cause::GaveUp {
        attempts: 7,
        elapsed: Duration::from_millis(30_100),
        last: Box::new(sealed),
    };
    assert_eq!(
        gave_up.to_string(),
        "HTTP 503 Service Unavailable: Vault is sealed (gave up after 7 attempts in 30.1s)"
    );
    assert_eq!(gave_up.status(), Some(503));
    assert!(
        Cause::Status {
            status: 429,
            errors: String::new()
        }
        .is_retryable()
    );
    assert!(!Cause::Tls("bad certificate".into()).is_retryable());
}

#[test]
fn provider_error_accessors() {
    let read = |status| ProviderError::Read {
        spc: "ns/app".into(),
        object: "db/password".into(),
        operation: "reading",
        path: "secret/data/db".into(),
        address: "http://bao:8200".into(),
        cause: Box::new(Cause::Status {
            status,
            errors: "x".into(),
        }),
    };
    let denied = read(403);
    assert_eq!(denied.http_status(), Some(403));
    assert!(denied.is_permission_denied() && !denied.is_not_found());
    assert_eq!(denied.reason(), "permission_denied");
    let msg = denied.to_string();
    for part in ["ns/app", "db/password", "secret/data/db", "HTTP 403"] {
        assert!(msg.contains(part), "{msg}");
    }
    assert!(read(404).is_not_found());
    assert_eq!(read(404).reason(), "not_found");
    assert_eq!(read(500).reason(), "server_error");
    assert!(read(502).is_transient());
    let missing = ProviderError::KeyNotFound {
        spc: "ns/app".into(),
        object: "o".into(),
        path: "secret/data/db".into(),
        key: "K".into(),
    };
    assert_eq!(
        missing.to_string(),
        "key 'K' does not exist at secret path 'secret/data/db' (object 'o', SPC 'ns/app')"
    );
    assert!(missing.is_not_found());
    assert_eq!(missing.reason(), "key_not_found");
    let login = ProviderError::Login {
        spc: "ns/app".into(),
        address: "http://bao:8200".into(),
        mount: "kubernetes".into(),
        role: "app".into(),
        cause: Box::new(Cause::Status {
            status: 400,
            errors: "invalid role name \"app\"".into(),
        }),
    };
    assert_eq!(login.reason(), "login_failed");
    let msg = login.to_string();
    assert!(
        msg.contains("auth mount 'kubernetes'")
            && msg.contains("role 'app'")
            && msg.contains("HTTP 400")
    );
}

#[test]
fn debug_of_config_and_provider_shows_no_secret() {
    let config = OpenBaoConfig {
        default_address: Some("http://bao:8200".into()),
        ..OpenBaoConfig::default()
    };
    assert_eq!(config.request_timeout, Duration::from_secs(10));
    assert_eq!(config.retry_deadline, Duration::from_secs(30));
    assert_eq!(config.max_object_size, 1 << 20);
    let provider = OpenBaoProvider::new(config).expect("client");
    let key = LoginKey {
        address: "http://bao:8200".into(),
        namespace: None,
        mount: "kubernetes".into(),
        role: "r".into(),
        tls: [0; 32],
        subject: super::auth::jwt_claims(&SecretString::new("jwt-secret-value".into())).subject,
    };
    let slot = provider.tokens.slot(&key);
    *slot.try_lock().expect("free") = Some(CachedToken::new(
        SecretString::new("s.token-secret".into()),
        Duration::from_secs(60),
        true,
        Instant::now(),
    ));
    let dbg = format!("{provider:?}");
    assert!(
        !dbg.contains("jwt-secret") && !dbg.contains("token-secret"),
        "{dbg}"
    );
    assert!(dbg.contains("entries: 1"), "{dbg}");
}

#[test]
fn jitter_stays_in_range() {
    for _ in 0..100 {
        let d = jittered(Duration::from_millis(1000));
        assert!(d >= Duration::from_millis(500) && d < Duration::from_millis(1000));
    }
}

// ----- HTTP flow against a scripted stand-in server --------------------------------------------

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    token: Option<String>,
    namespace: Option<String>,
    body: String,
}

type Handler = dyn Fn(&Seen, usize) -> (u16, String) + Send + Sync;

/// A one-request-per-connection HTTP/1.1 server answering with `handler(request, index)`.
fn stand_in(handler: Box<Handler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_owned();
            let target = parts.next().unwrap_or_default().to_owned();
            let (mut token, mut namespace, mut len) = (None, None, 0usize);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "x-vault-token" => token = Some(v.trim().to_owned()),
                        "x-vault-namespace" => namespace = Some(v.trim().to_owned()),
                        "content-length" => len = v.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let req = Seen {
                method,
                target,
                token,
                namespace,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let index = {
                let mut log = log.lock().expect("log");
                log.push(req.clone());
                log.len() - 1
            };
            let (status, body) = handler(&req, index);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, seen)
}

fn volume(address: &str, objects: &str, credentials: Credentials) -> VolumeSpec {
    let yaml = format!(
        "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\n\
         metadata: {{name: app, namespace: ns}}\nspec:\n  provider: openbao\n  parameters:\n\
         \x20   roleName: app-role\n    vaultAddress: '{address}'\n    objects: |\n{objects}"
    );
    VolumeSpec {
        id: "vol".into(),
        spc: SecretProviderClass::from_yaml(&yaml).expect("spc"),
        pod: PodInfo::default(),
        credentials,
        ownership: Ownership::default(),
    }
}

fn provider(deadline_ms: u64) -> OpenBaoProvider {
    OpenBaoProvider::new(OpenBaoConfig {
        retry_deadline: Duration::from_millis(deadline_ms),
        request_timeout: Duration::from_secs(2),
        ..OpenBaoConfig::default()
    })
    .expect("client")
}

const KV2: &str = r#"{"request_id":"x","data":{"data":{"user":"admin","pass":"hunter2"},"metadata":{"version":2}}}"#;

fn token(t: &str) -> Credentials {
    Credentials::Token(SecretString::new(t.into()))
}

fn jwt(t: &str) -> Credentials {
    Credentials::Jwt(SecretString::new(t.into()))
}

fn values(objects: &[FetchedObject]) -> Vec<(String, String)> {
    objects
        .iter()
        .map(|o| {
            (
                o.path.to_string(),
                String::from_utf8_lossy(o.value.expose()).into_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn one_read_per_distinct_path_in_object_order() {
    let (addr, seen) = stand_in(Box::new(|_, _| (200, KV2.to_owned())));
    let spec = volume(
        &addr,
        "      - {objectName: p, secretPath: secret/data/db, secretKey: pass}\n\
         \x20     - {objectName: u, secretPath: /v1/secret/data/db, secretKey: user}\n\
         \x20     - {objectName: all, secretPath: secret/data/db?version=2}\n",
        token("s.root"),
    );
    let got = provider(1000).fetch(&spec).await.expect("fetch");
    assert_eq!(
        values(&got),
        [
            ("p".into(), "hunter2".into()),
            ("u".into(), "admin".into()),
            ("all".into(), r#"{"pass":"hunter2","user":"admin"}"#.into()),
        ]
    );
    let seen = seen.lock().expect("log").clone();
    let targets: Vec<_> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(
        targets,
        ["/v1/secret/data/db", "/v1/secret/data/db?version=2"]
    );
    assert!(
        seen.iter()
            .all(|s| s.method == "GET" && s.token.as_deref() == Some("s.root"))
    );
}

#[tokio::test]
async fn login_is_cached_and_redone_once_on_403() {
    let (addr, seen) = stand_in(Box::new(|req, _| {
        if req.target.ends_with("/login") {
            let n = if req.body.contains("jwt-2") { 2 } else { 1 };
            return (
                200,
                format!(r#"{{"auth":{{"client_token":"s.login{n}","lease_duration":3600}}}}"#),
            );
        }
        match req.token.as_deref() {
            Some("s.login1" | "s.login2") => (200, KV2.to_owned()),
            _ => (403, r#"{"errors":["permission denied"]}"#.to_owned()),
        }
    }));
    let objects = "      - {objectName: p, secretPath: secret/data/db, secretKey: pass}\n";
    let p = provider(1000);
    let spec = volume(&addr, objects, jwt("jwt-1"));
    for _ in 0..3 {
        p.fetch(&spec).await.expect("fetch");
    }
    let logins = |seen: &Arc<Mutex<Vec<Seen>>>| {
        seen.lock()
            .expect("log")
            .iter()
            .filter(|s| s.target == "/v1/auth/kubernetes/login")
            .count()
    };
    assert_eq!(logins(&seen), 1, "one login for three fetches");
    let first = seen.lock().expect("log")[0].clone();
    assert_eq!(first.method, "POST");
    assert_eq!(
        serde_json::from_str::<Value>(&first.body).expect("json"),
        json!({"jwt": "jwt-1", "role": "app-role"})
    );
    // Another JWT never reuses that token.
    p.fetch(&volume(&addr, objects, jwt("jwt-2")))
        .await
        .expect("fetch");
    assert_eq!(logins(&seen), 2);

    // A cached token that the server revoked: one more login, then the read succeeds.
    let slot = p.tokens.slot(&LoginKey {
        address: addr.clone(),
        namespace: None,
        mount: "kubernetes".into(),
        role: "app-role".into(),
        tls: [0; 32],
        subject: super::auth::jwt_claims(&SecretString::new("jwt-1".into())).subject,
    });
    *slot.lock().await = Some(CachedToken::new(
        SecretString::new("s.revoked".into()),
        Duration::from_secs(3600),
        false,
        Instant::now(),
    ));
    let got = p.fetch(&spec).await.expect("relogin");
    assert_eq!(values(&got)[0].1, "hunter2");
    assert_eq!(logins(&seen), 3);
}

#[tokio::test]
async fn fresh_login_refused_is_not_retried() {
    let (addr, seen) = stand_in(Box::new(|req, _| {
        if req.target.ends_with("/login") {
            (
                200,
                r#"{"auth":{"client_token":"s.t","lease_duration":60}}"#.to_owned(),
            )
        } else {
            (
                403,
                r#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#.to_owned(),
            )
        }
    }));
    let spec = volume(
        &addr,
        "      - {objectName: p, secretPath: secret/data/db?version=1, secretKey: pass}\n",
        jwt("j"),
    );
    let e = provider(1000).fetch(&spec).await.expect_err("denied");
    assert!(e.is_permission_denied());
    let msg = e.to_string();
    assert_eq!(
        msg,
        format!(
            "SecretProviderClass 'ns/app': object 'p': reading OpenBao path 'secret/data/db' at {addr} failed: HTTP 403 Forbidden: 1 error occurred: * permission denied"
        )
    );
    assert_eq!(seen.lock().expect("log").len(), 2);
}

#[tokio::test]
async fn login_errors_name_mount_and_role() {
    let (addr, _) = stand_in(Box::new(|_, _| {
        (
            400,
            r#"{"errors":["invalid role name \"app-role\""]}"#.to_owned(),
        )
    }));
    let e = provider(1000)
        .fetch(&volume(
            &addr,
            "      - {objectName: p, secretPath: s/p}\n",
            jwt("j"),
        ))
        .await
        .expect_err("login fails");
    let msg = e.to_string();
    assert!(
        msg.contains("auth mount 'kubernetes'")
            && msg.contains("role 'app-role'")
            && msg.contains("HTTP 400"),
        "{msg}"
    );
    assert_eq!(e.http_status(), Some(400));
}

#[tokio::test]
async fn sealed_is_retried_then_succeeds() {
    let (addr, seen) = stand_in(Box::new(|_, i| {
        if i < 2 {
            (503, r#"{"errors":["Vault is sealed"]}"#.to_owned())
        } else {
            (200, KV2.to_owned())
        }
    }));
    let spec = volume(
        &addr,
        "      - {objectName: p, secretPath: secret/data/db, secretKey: pass}\n",
        token("t"),
    );
    let got = provider(5000)
        .fetch(&spec)
        .await
        .expect("fetch after retries");
    assert_eq!(values(&got)[0].1, "hunter2");
    assert_eq!(seen.lock().expect("log").len(), 3);
}

#[tokio::test]
async fn giving_up_names_attempts_and_last_cause() {
    let (addr, _) = stand_in(Box::new(|_, _| {
        (503, r#"{"errors":["Vault is sealed"]}"#.to_owned())
    }));
    let spec = volume(
        &addr,
        "      - {objectName: p, secretPath: secret/data/db, secretKey: pass}\n",
        token("t"),
    );
    let e = provider(400).fetch(&spec).await.expect_err("sealed");
    let msg = e.to_string();
    assert!(
        msg.contains("HTTP 503 Service Unavailable: Vault is sealed (gave up after"),
        "{msg}"
    );
    assert!(e.is_transient());
    assert_eq!(e.reason(), "server_error");
}

#[tokio::test]
async fn unreachable_and_missing_address() {
    // Nothing listens on a port just released.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let spec = volume(
        &format!("http://127.0.0.1:{port}"),
        "      - {objectName: p, secretPath: s/p}\n",
        token("t"),
    );
    let e = provider(0).fetch(&spec).await.expect_err("unreachable");
    assert_eq!(e.reason(), "unreachable", "{e}");
    assert!(e.to_string().contains("gave up after 1 attempt in"), "{e}");

    let mut spec = spec;
    spec.spc.params.address = None;
    let e = provider(0).fetch(&spec).await.expect_err("no address");
    assert_eq!(
        e.to_string(),
        "missing 'vaultAddress' (or baoAddress/openbaoAddress) in SecretProviderClass ns/app and BAO_ADDR is not set"
    );
}

#[tokio::test]
async fn not_found_deleted_and_missing_key() {
    let (addr, _) = stand_in(Box::new(|req, _| {
        match req.target.as_str() {
        "/v1/secret/data/gone" => (404, r#"{"errors":[]}"#.to_owned()),
        "/v1/secret/data/deleted" => (
            404,
            r#"{"data":{"data":null,"metadata":{"deletion_time":"2026-01-01T00:00:00Z","version":3}}}"#.to_owned(),
        ),
        _ => (200, KV2.to_owned()),
    }
    }));
    let p = provider(1000);
    let fetch = |path: &str, key: &str| {
        volume(
            &addr,
            &format!("      - {{objectName: o, secretPath: '{path}', secretKey: {key}}}\n"),
            token("t"),
        )
    };
    let e = p
        .fetch(&fetch("secret/data/gone", "pass"))
        .await
        .expect_err("404");
    assert!(e.is_not_found() && e.http_status() == Some(404), "{e}");
    let e = p
        .fetch(&fetch("secret/data/deleted", "pass"))
        .await
        .expect_err("deleted");
    assert_eq!(e.reason(), "deleted_version");
    assert!(e.to_string().contains("deleted or destroyed"), "{e}");
    let e = p
        .fetch(&fetch("secret/data/db", "nope"))
        .await
        .expect_err("no key");
    assert_eq!(
        e.to_string(),
        "key 'nope' does not exist at secret path 'secret/data/db' (object 'o', SPC 'ns/app')"
    );
    let e = p
        .fetch(&volume(
            &addr,
            "      - {objectName: o, secretPath: secret/data/db, secretKey: pass, encoding: hex}\n",
            token("t"),
        ))
        .await
        .expect_err("not hex");
    let msg = format!("{e} {e:?}");
    assert!(
        msg.contains("object 'o'") && msg.contains("hex") && !msg.contains("hunter2"),
        "{msg}"
    );
}

fn volume_with(address: &str, params: &str, objects: &str, credentials: Credentials) -> VolumeSpec {
    let yaml = format!(
        "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\n\
         metadata: {{name: app, namespace: ns}}\nspec:\n  provider: openbao\n  parameters:\n\
         \x20   roleName: app-role\n    vaultAddress: '{address}'\n{params}    objects: |\n{objects}"
    );
    VolumeSpec {
        id: "vol".into(),
        spc: SecretProviderClass::from_yaml(&yaml).expect("spc"),
        pod: PodInfo::default(),
        credentials,
        ownership: Ownership::default(),
    }
}

fn count(seen: &Arc<Mutex<Vec<Seen>>>, f: impl Fn(&Seen) -> bool) -> usize {
    seen.lock().expect("log").iter().filter(|s| f(s)).count()
}

/// Fetches `spec` every 20 ms until `done` holds (5 s at most); returns the last fetch.
async fn fetch_until(
    p: &OpenBaoProvider,
    spec: &VolumeSpec,
    what: &str,
    done: impl Fn() -> bool,
) -> Vec<FetchedObject> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = p.fetch(spec).await.expect("fetch");
        if done() {
            return got;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn dynamic_secret_is_issued_once_renewed_reissued_when_refused_and_revoked() {
    let issued = Arc::new(Mutex::new(0usize));
    let renews = Arc::new(Mutex::new(0usize));
    let (i2, n2) = (Arc::clone(&issued), Arc::clone(&renews));
    let (addr, seen) = stand_in(Box::new(move |req, _| match req.target.as_str() {
        "/v1/database/creds/app" => {
            let mut i = i2.lock().expect("issued");
            *i += 1;
            (
                200,
                format!(
                    r#"{{"request_id":"r{i}","lease_id":"database/creds/app/L{i}","renewable":true,"lease_duration":1,"data":{{"username":"u{i}","password":"p{i}"}}}}"#
                ),
            )
        }
        "/v1/sys/leases/renew" => {
            let mut n = n2.lock().expect("renews");
            *n += 1;
            if *n == 1 {
                (
                    200,
                    r#"{"lease_id":"database/creds/app/L1","renewable":true,"lease_duration":1,"data":null}"#.to_owned(),
                )
            } else {
                (400, r#"{"errors":["lease not found"]}"#.to_owned())
            }
        }
        "/v1/sys/leases/revoke" => (204, String::new()),
        _ => (404, r#"{"errors":[]}"#.to_owned()),
    }));
    let spec = volume(
        &addr,
        "      - {objectName: user, secretPath: database/creds/app, secretKey: username}\n\
         \x20     - {objectName: pass, secretPath: database/creds/app, secretKey: password}\n\
         \x20     - {objectName: all, secretPath: database/creds/app}\n",
        token("s.root"),
    );
    let p = provider(1000);
    let first = p.fetch(&spec).await.expect("fetch");
    assert_eq!(
        values(&first),
        [
            ("user".into(), "u1".into()),
            ("pass".into(), "p1".into()),
            ("all".into(), r#"{"password":"p1","username":"u1"}"#.into()),
        ],
        "three objects, one lease"
    );
    let soon = SystemTime::now() + Duration::from_secs(1);
    assert!(
        first
            .iter()
            .all(|o| o.refresh_at.is_some_and(|t| t <= soon)),
        "renewal due at two thirds of the 1 s lease"
    );
    let again = p.fetch(&spec).await.expect("reuse");
    assert_eq!(values(&again)[0].1, "u1");
    assert_eq!(
        again[0].version, first[0].version,
        "same content, same version"
    );
    assert_eq!(count(&seen, |s| s.target == "/v1/database/creds/app"), 1);

    // Renewed at two thirds (the same credential), then the renewal is refused: re-issued.
    let renewed = fetch_until(&p, &spec, "a renewal", || *renews.lock().expect("n") >= 1).await;
    assert_eq!(values(&renewed)[0].1, "u1");
    let renew = seen
        .lock()
        .expect("log")
        .iter()
        .find(|s| s.target == "/v1/sys/leases/renew")
        .cloned()
        .expect("renew request");
    assert_eq!(renew.method, "PUT");
    assert_eq!(
        serde_json::from_str::<Value>(&renew.body).expect("json"),
        json!({"lease_id": "database/creds/app/L1", "increment": 1})
    );
    let reissued = fetch_until(&p, &spec, "a re-issue", || *issued.lock().expect("i") >= 2).await;
    assert_eq!(values(&reissued)[0].1, "u2");
    assert_ne!(reissued[0].version, first[0].version);

    // Release revokes the current lease (the refused one is gone already).
    p.release(&spec).await;
    let revokes: Vec<Seen> = seen
        .lock()
        .expect("log")
        .iter()
        .filter(|s| s.target == "/v1/sys/leases/revoke")
        .cloned()
        .collect();
    assert_eq!(revokes.len(), 1, "{revokes:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&revokes[0].body).expect("json"),
        json!({"lease_id": "database/creds/app/L2"})
    );
    assert_eq!(p.leases.len(), 0);
    p.release(&spec).await;
    assert_eq!(count(&seen, |s| s.target == "/v1/sys/leases/revoke"), 1);
}

#[tokio::test]
async fn leases_are_per_volume() {
    let (addr, seen) = stand_in(Box::new(|req, i| match req.target.as_str() {
        "/v1/database/creds/app" => (
            200,
            format!(
                r#"{{"lease_id":"database/creds/app/L{i}","renewable":true,"lease_duration":3600,"data":{{"username":"u{i}"}}}}"#
            ),
        ),
        _ => (204, String::new()),
    }));
    let objects =
        "      - {objectName: user, secretPath: database/creds/app, secretKey: username}\n";
    let a = volume(&addr, objects, token("t"));
    let mut b = volume(&addr, objects, token("t"));
    b.id = "vol-b".into();
    let p = provider(1000);
    let ua = values(&p.fetch(&a).await.expect("a"))[0].1.clone();
    let ub = values(&p.fetch(&b).await.expect("b"))[0].1.clone();
    assert_ne!(ua, ub, "two volumes never share a credential");
    assert_eq!(values(&p.fetch(&a).await.expect("a"))[0].1, ua);
    p.release(&a).await;
    assert_eq!(count(&seen, |s| s.target == "/v1/sys/leases/revoke"), 1);
    assert_eq!(
        values(&p.fetch(&b).await.expect("b"))[0].1,
        ub,
        "b keeps its lease"
    );
}

#[tokio::test]
async fn pki_write_sends_secret_args_once() {
    let expiration = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let (addr, seen) = stand_in(Box::new(move |_, i| {
        (
            200,
            format!(
                r#"{{"lease_id":"","renewable":false,"lease_duration":0,"data":{{"certificate":"CERT{i}","private_key":"KEY{i}","serial_number":"{i}","expiration":{expiration}}}}}"#
            ),
        )
    }));
    let spec = volume(
        &addr,
        "      - {objectName: tls.crt, secretPath: pki/issue/web, method: PUT, secretArgs: {common_name: app.example.com, ttl: 1h}, secretKey: certificate}\n\
         \x20     - {objectName: tls.key, secretPath: pki/issue/web, method: PUT, secretArgs: {ttl: 1h, common_name: app.example.com}, secretKey: private_key}\n",
        token("t"),
    );
    let p = provider(1000);
    let got = p.fetch(&spec).await.expect("issue");
    assert_eq!(
        values(&got),
        [
            ("tls.crt".into(), "CERT0".into()),
            ("tls.key".into(), "KEY0".into())
        ]
    );
    let later = SystemTime::now() + Duration::from_secs(2300);
    assert!(
        got[0].refresh_at.is_some_and(|t| t > later),
        "re-issued at two thirds of the certificate's validity"
    );
    p.fetch(&spec).await.expect("kept");
    let seen = seen.lock().expect("log").clone();
    assert_eq!(seen.len(), 1, "issued once: {seen:?}");
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].target, "/v1/pki/issue/web");
    assert_eq!(
        serde_json::from_str::<Value>(&seen[0].body).expect("json"),
        json!({"common_name": "app.example.com", "ttl": "1h"})
    );
    p.release(&spec).await;
}

#[tokio::test]
async fn namespace_is_sent_on_login_and_reads() {
    let (addr, seen) = stand_in(Box::new(|req, _| {
        if req.target.ends_with("/login") {
            (
                200,
                r#"{"auth":{"client_token":"s.t","lease_duration":3600,"renewable":false}}"#
                    .to_owned(),
            )
        } else {
            (200, KV2.to_owned())
        }
    }));
    let spec = volume_with(
        &addr,
        "    baoNamespace: team-a/sub\n",
        "      - {objectName: p, secretPath: secret/data/db, secretKey: pass}\n",
        jwt("j"),
    );
    provider(1000).fetch(&spec).await.expect("fetch");
    let seen = seen.lock().expect("log").clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|s| s.namespace.as_deref() == Some("team-a/sub")),
        "{seen:?}"
    );
    // Without the parameter, no header.
    let (addr, seen) = stand_in(Box::new(|_, _| (200, KV2.to_owned())));
    let spec = volume(
        &addr,
        "      - {objectName: p, secretPath: secret/data/db, secretKey: pass}\n",
        token("t"),
    );
    provider(1000).fetch(&spec).await.expect("fetch");
    assert_eq!(seen.lock().expect("log")[0].namespace, None);
}

#[tokio::test]
async fn renewable_login_token_is_renewed_instead_of_a_new_login() {
    let (addr, seen) = stand_in(Box::new(|req, _| {
        if req.target.ends_with("/login") || req.target == "/v1/auth/token/renew-self" {
            (
                200,
                r#"{"auth":{"client_token":"s.login","lease_duration":1,"renewable":true}}"#
                    .to_owned(),
            )
        } else {
            (200, KV2.to_owned())
        }
    }));
    let spec = volume(
        &addr,
        "      - {objectName: p, secretPath: secret/data/db, secretKey: pass}\n",
        jwt("j"),
    );
    let p = provider(1000);
    let renew_self = |s: &Seen| s.target == "/v1/auth/token/renew-self";
    fetch_until(&p, &spec, "two renewals", || count(&seen, renew_self) >= 2).await;
    assert_eq!(count(&seen, |s| s.target.ends_with("/login")), 1);
    let renewal = seen
        .lock()
        .expect("log")
        .iter()
        .find(|s| renew_self(s))
        .cloned()
        .expect("renewal");
    assert_eq!(renewal.method, "POST");
    assert_eq!(renewal.token.as_deref(), Some("s.login"));
    assert_eq!(
        serde_json::from_str::<Value>(&renewal.body).expect("json"),
        json!({"increment": 1})
    );
}

#[tokio::test]
async fn versions_are_stable_and_carry_the_kv2_version() {
    let (addr, _) = stand_in(Box::new(|_, _| (200, KV2.to_owned())));
    let spec = volume(
        &addr,
        "      - {objectName: p, secretPath: secret/data/db, secretKey: pass}\n\
         \x20     - {objectName: u, secretPath: secret/data/db, secretKey: user}\n",
        token("t"),
    );
    let p = provider(1000);
    let a = p.fetch(&spec).await.expect("fetch");
    let b = p.fetch(&spec).await.expect("fetch");
    assert_eq!(a[0].version, b[0].version);
    assert!(a[0].version.starts_with("v2-"), "{}", a[0].version);
    assert_ne!(a[0].version, a[1].version);
    assert!(!a[0].version.contains("hunter2"));
    assert!(
        a.iter().all(|o| o.refresh_at.is_none()),
        "KV needs no early poll"
    );
}

#[tokio::test]
async fn tls_file_problems_name_the_parameter() {
    let spec = volume_with(
        "https://127.0.0.1:1",
        "    vaultCACertPath: /nonexistent/ca.pem\n",
        "      - {objectName: p, secretPath: s/p}\n",
        token("t"),
    );
    let e = provider(0).fetch(&spec).await.expect_err("no CA file");
    assert_eq!(e.reason(), "tls_config");
    let msg = e.to_string();
    assert!(
        msg.contains("'<prefix>CACertPath'") && msg.contains("/nonexistent/ca.pem"),
        "{msg}"
    );
}

// ----- reads shared across volumes (issue 6) ---------------------------------------------------

/// An unsigned JWT-shaped string with these claims (the stand-in accepts any).
fn sa_jwt(sub: &str, pod: &str) -> Credentials {
    use base64::Engine as _;
    let claims = json!({"iss": "k8s", "sub": sub, "aud": ["openbao"], "pod": pod});
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    jwt(&format!("e30.{payload}.c2ln"))
}

fn shared_provider(window: Duration) -> OpenBaoProvider {
    OpenBaoProvider::new(OpenBaoConfig {
        retry_deadline: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        share_window: window,
        ..OpenBaoConfig::default()
    })
    .expect("client")
}

#[tokio::test]
async fn same_identity_shares_reads_and_token_other_identities_do_not() {
    let (addr, seen) = stand_in(Box::new(|req, i| {
        if req.target.ends_with("/login") {
            return (
                200,
                format!(r#"{{"auth":{{"client_token":"s.login{i}","lease_duration":3600}}}}"#),
            );
        }
        (200, KV2.to_owned())
    }));
    let objects = "      - {objectName: p, secretPath: secret/data/db, secretKey: pass}\n";
    let p = shared_provider(Duration::from_secs(60));
    let pod = |n: &str| volume(&addr, objects, sa_jwt("system:serviceaccount:ns:app", n));
    let is_login = |s: &Seen| s.target.ends_with("/login");
    let is_read = |s: &Seen| s.target == "/v1/secret/data/db";

    let got = p.fetch(&pod("a")).await.expect("a");
    assert_eq!(values(&got)[0].1, "hunter2");
    assert_eq!((count(&seen, is_login), count(&seen, is_read)), (1, 1));
    // The same JWT again: nothing new.
    p.fetch(&pod("a")).await.expect("a again");
    assert_eq!((count(&seen, is_login), count(&seen, is_read)), (1, 1));
    // Another pod of the same service account: its JWT logs in once (accepted by OpenBao),
    // then shares the identity's token and the cached read.
    p.fetch(&pod("b")).await.expect("b");
    assert_eq!((count(&seen, is_login), count(&seen, is_read)), (2, 1));
    let reads_with: Vec<_> = seen
        .lock()
        .expect("log")
        .iter()
        .filter(|s| is_read(s))
        .map(|s| s.token.clone())
        .collect();
    assert_eq!(reads_with, [Some("s.login0".to_owned())]);
    // Another service account: its own login and its own read.
    p.fetch(&volume(
        &addr,
        objects,
        sa_jwt("system:serviceaccount:ns:other", "c"),
    ))
    .await
    .expect("other");
    assert_eq!((count(&seen, is_login), count(&seen, is_read)), (3, 2));
    // A raw token is its own identity.
    p.fetch(&volume(&addr, objects, token("s.root")))
        .await
        .expect("token");
    assert_eq!(count(&seen, is_read), 3);
}

#[tokio::test]
async fn concurrent_fetches_make_one_request_and_dynamic_reads_stay_per_volume() {
    let (addr, seen) = stand_in(Box::new(|req, i| {
        if req.target.contains("creds") {
            return (
                200,
                format!(
                    r#"{{"lease_id":"database/creds/app/l{i}","lease_duration":600,"renewable":true,"data":{{"username":"u{i}"}}}}"#
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
        (200, KV2.to_owned())
    }));
    let objects = "      - {objectName: p, secretPath: secret/data/db, secretKey: pass}\n\
                   \x20     - {objectName: u, secretPath: database/creds/app, secretKey: username}\n";
    // Window zero: only requests in flight are shared.
    let p = Arc::new(shared_provider(Duration::ZERO));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let p = Arc::clone(&p);
        let mut spec = volume(&addr, objects, token("s.root"));
        spec.id = format!("vol-{i}");
        tasks.push(tokio::spawn(async move { p.fetch(&spec).await }));
    }
    let mut users = std::collections::HashSet::new();
    for t in tasks {
        let got = t.await.expect("join").expect("fetch");
        users.insert(values(&got)[1].1.clone());
    }
    assert_eq!(count(&seen, |s| s.target == "/v1/secret/data/db"), 1);
    assert_eq!(count(&seen, |s| s.target.contains("creds")), 20);
    assert_eq!(users.len(), 20, "each volume has its own credential");
}
