//! Dynamic secrets (issue 3) against OpenBao's database secrets engine and a real PostgreSQL
//! (started by `scripts/test.sh`, `peers_pg_start`), and the PKI engine.
//!
//! - The file holds a working username/password (we log in to PostgreSQL with it).
//! - The lease is renewed at two thirds (the same credential across its TTL), driven by the
//!   provider's refresh deadline while the poll interval is far longer.
//! - Unmounting revokes it: the PostgreSQL role disappears.
//! - At the max TTL the credential is re-issued and the files change atomically (an fd opened
//!   before keeps the old version); a login with what the files say never fails meanwhile.
//! - `PUT/POST pki/issue/<role>` with `secretArgs` gives a certificate, issued once.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Bao, MountOpts, Mounted, poll_until, setup, unique};
use crate::tls::test_env;

/// The PostgreSQL server of the test run.
struct Pg {
    port: String,
    user: String,
    password: String,
    psql: String,
}

fn pg() -> Pg {
    Pg {
        port: test_env("BAOFS_TEST_PG_PORT"),
        user: test_env("BAOFS_TEST_PG_USER"),
        password: test_env("BAOFS_TEST_PG_PASSWORD"),
        psql: test_env("BAOFS_TEST_PSQL"),
    }
}

impl Pg {
    /// Runs `sql` as `user` over TCP with password auth; stdout, or psql's error.
    fn query_as(&self, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(&self.psql)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port,
                "-U",
                user,
                "-d",
                "postgres",
                "-w",
                "-tA",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn superuser(&self, sql: &str) -> String {
        self.query_as(&self.user, &self.password, sql)
            .unwrap_or_else(|e| panic!("psql as superuser: {sql}: {e}"))
    }

    fn role_exists(&self, role: &str) -> bool {
        let n = self.superuser(&format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = '{}'",
            role.replace('\'', "''")
        ));
        n == "1"
    }

    /// Logs in with the credential and returns `current_user`.
    fn login(&self, user: &str, password: &str) -> Result<String, String> {
        self.query_as(user, password, "SELECT current_user")
    }
}

/// Mounts OpenBao's database engine at a fresh path, connected to the test PostgreSQL, with a
/// role `app` of the given TTLs. Returns the mount path.
fn database_engine(bao: &Bao, pg: &Pg, ttl: &str, max_ttl: &str) -> String {
    let mount = unique("db");
    bao.ok(
        Method::POST,
        &format!("sys/mounts/{mount}"),
        Some(&json!({"type": "database"})),
    );
    bao.ok(
        Method::POST,
        &format!("{mount}/config/pg"),
        Some(&json!({
            "plugin_name": "postgresql-database-plugin",
            "allowed_roles": "*",
            "connection_url": format!(
                "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable",
                pg.port
            ),
            "username": pg.user,
            "password": pg.password,
            "verify_connection": true,
        })),
    );
    bao.ok(
        Method::POST,
        &format!("{mount}/roles/app"),
        Some(&json!({
            "db_name": "pg",
            "default_ttl": ttl,
            "max_ttl": max_ttl,
            "creation_statements": [
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
                "GRANT CONNECT ON DATABASE postgres TO \"{{name}}\";"
            ],
        })),
    );
    mount
}

/// Lease ids OpenBao holds under `prefix` (e.g. `db-…/creds/app`).
fn leases(bao: &Bao, prefix: &str) -> Vec<String> {
    let (status, v) = bao.call(
        Method::from_bytes(b"LIST").expect("LIST"),
        &format!("sys/leases/lookup/{prefix}/"),
        None,
    );
    if status == 404 {
        return Vec::new();
    }
    assert_eq!(status, 200, "list leases: {v}");
    v["data"]["keys"]
        .as_array()
        .map(|k| {
            k.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// An SPC whose objects are given as YAML list items (6-space indented).
fn spc(name: &str, addr: &str, objects: &str) -> String {
    format!(
        "apiVersion: secrets-store.csi.x-k8s.io/v1\n\
         kind: SecretProviderClass\n\
         metadata:\n  name: {name}\n  namespace: baofs-test\n\
         spec:\n  provider: openbao\n  parameters:\n    vaultAddress: \"{addr}\"\n    roleName: \"dyn\"\n    objects: |\n{objects}"
    )
}

fn db_objects(mount: &str) -> String {
    format!(
        "      - objectName: creds\n        secretPath: {mount}/creds/app\n\
         \x20     - objectName: db/username\n        secretPath: {mount}/creds/app\n        secretKey: username\n\
         \x20     - objectName: db/password\n        secretPath: {mount}/creds/app\n        secretKey: password\n"
    )
}

fn creds(m: &Mounted) -> (String, String) {
    let v: Value = serde_json::from_str(&m.read_string("creds")).expect("creds is JSON");
    (
        v["username"].as_str().expect("username").to_string(),
        v["password"].as_str().expect("password").to_string(),
    )
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn database_credentials_work_are_renewed_and_revoked_on_unmount() {
    let Some(cx) = setup() else { return };
    let pg = pg();
    let mount = database_engine(&cx.bao, &pg, "4s", "1h");
    // The poll interval is far longer than the lease: renewals come from the refresh deadline.
    let m = Mounted::start(
        MountOpts::new(&cx, spc(&unique("db"), &cx.bao.addr, &db_objects(&mount))).interval("5m"),
    );
    let (user, password) = creds(&m);
    assert_eq!(
        m.read_string("db/username"),
        user,
        "one lease for all objects"
    );
    assert_eq!(m.read_string("db/password"), password);
    assert_eq!(pg.login(&user, &password).as_deref(), Ok(user.as_str()));
    assert_eq!(leases(&cx.bao, &format!("{mount}/creds/app")).len(), 1);

    // Three renewals span more than two 4 s leases: the credential lives on, unchanged.
    let started = Instant::now();
    poll_until("three lease renewals", Duration::from_secs(40), || {
        (count(&m.stderr(), "renewed a dynamic secret's lease") >= 3).then_some(())
    });
    assert!(
        started.elapsed() > Duration::from_secs(4),
        "renewed before the lease ended"
    );
    assert_eq!(
        creds(&m),
        (user.clone(), password.clone()),
        "same credential"
    );
    assert_eq!(pg.login(&user, &password).as_deref(), Ok(user.as_str()));
    assert_eq!(
        leases(&cx.bao, &format!("{mount}/creds/app")).len(),
        1,
        "never re-issued"
    );
    assert_eq!(count(&m.stderr(), "issued a dynamic secret"), 1);
    let stderr = m.stderr();
    assert!(!stderr.contains(&password), "the password was logged");

    // Unmount: the lease is revoked and OpenBao drops the PostgreSQL role.
    m.stop();
    poll_until(
        "the PostgreSQL role to be dropped",
        Duration::from_secs(15),
        || (!pg.role_exists(&user)).then_some(()),
    );
    assert!(leases(&cx.bao, &format!("{mount}/creds/app")).is_empty());
    assert!(pg.login(&user, &password).is_err());
}

#[test]
fn database_credentials_rotate_atomically_at_max_ttl() {
    let Some(cx) = setup() else { return };
    let pg = pg();
    let mount = database_engine(&cx.bao, &pg, "3s", "9s");
    let m = Mounted::start(
        MountOpts::new(&cx, spc(&unique("db"), &cx.bao.addr, &db_objects(&mount))).interval("5m"),
    );
    let (user1, password1) = creds(&m);
    let mut before = std::fs::File::open(m.path("creds")).expect("open creds");

    // Until the credential changes, whatever the file says logs in.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut checks = 0;
    let (user2, password2) = loop {
        let (u, p) = creds(&m);
        if let Err(e) = pg.login(&u, &p) {
            panic!("the mounted credential {u} did not log in: {e}");
        }
        checks += 1;
        if u != user1 {
            break (u, p);
        }
        assert!(Instant::now() < deadline, "no rotation at the max TTL");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(checks > 5, "logged in {checks} times before the rotation");
    assert_ne!(password2, password1);
    // The files agree with each other, and an fd opened before keeps the old version.
    assert_eq!(m.read_string("db/username"), user2);
    assert_eq!(m.read_string("db/password"), password2);
    let mut old = String::new();
    before.read_to_string(&mut old).expect("read old fd");
    assert!(
        old.contains(&user1),
        "an fd opened before the rotation keeps its version"
    );
    assert_eq!(pg.login(&user2, &password2).as_deref(), Ok(user2.as_str()));
    assert!(
        m.stderr().contains("capped=true"),
        "the renewal was capped by the max TTL"
    );

    // The old credential ends at its max TTL (OpenBao drops the role); the new one lives on.
    poll_until("the old role to expire", Duration::from_secs(30), || {
        (!pg.role_exists(&user1)).then_some(())
    });
    assert_eq!(pg.login(&user2, &password2).as_deref(), Ok(user2.as_str()));
    m.stop();
    poll_until(
        "the new role to be revoked",
        Duration::from_secs(15),
        || (!pg.role_exists(&user2)).then_some(()),
    );
}

#[test]
fn pki_issue_gives_a_certificate_issued_once() {
    let Some(cx) = setup() else { return };
    let pki = unique("pki");
    cx.bao.ok(
        Method::POST,
        &format!("sys/mounts/{pki}"),
        Some(&json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}})),
    );
    cx.bao.ok(
        Method::POST,
        &format!("{pki}/root/generate/internal"),
        Some(&json!({"common_name": "baofs test root", "ttl": "87600h", "key_type": "ec"})),
    );
    cx.bao.ok(
        Method::POST,
        &format!("{pki}/roles/web"),
        Some(
            &json!({"allowed_domains": "example.com", "allow_subdomains": true,
                     "max_ttl": "72h", "key_type": "ec"}),
        ),
    );
    let args = "        secretArgs:\n          common_name: app.example.com\n          ttl: 1h\n";
    let objects = format!(
        "      - objectName: tls.crt\n        secretPath: {pki}/issue/web\n        method: POST\n        secretKey: certificate\n{args}\
         \x20     - objectName: tls.key\n        secretPath: {pki}/issue/web\n        method: POST\n        secretKey: private_key\n{args}\
         \x20     - objectName: ca.crt\n        secretPath: {pki}/issue/web\n        method: POST\n        secretKey: issuing_ca\n{args}"
    );
    let m = Mounted::start(
        MountOpts::new(&cx, spc(&unique("pki"), &cx.bao.addr, &objects))
            .interval("500ms")
            .args(&["--log-level", "baofs=debug"]),
    );
    let cert = m.read_string("tls.crt");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    let key = m.read_string("tls.key");
    assert!(key.contains("PRIVATE KEY-----"));
    // The certificate is for the requested name, signed by the CA, and matches the key.
    let openssl = |args: &[&str]| -> String {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let crt = m.path("tls.crt").display().to_string();
    let subject = openssl(&["x509", "-in", &crt, "-noout", "-subject"]);
    assert!(subject.contains("app.example.com"), "{subject}");
    let ca = m.path("ca.crt").display().to_string();
    openssl(&["verify", "-CAfile", &ca, &crt]);
    let key_path = m.path("tls.key").display().to_string();
    assert_eq!(
        openssl(&["x509", "-in", &crt, "-noout", "-pubkey"]),
        openssl(&["pkey", "-in", &key_path, "-pubout"]),
        "tls.key is the certificate's key"
    );
    // Polls go on without issuing again.
    poll_until("three polls", Duration::from_secs(20), || {
        (count(&m.stderr(), "poll: no change") >= 3).then_some(())
    });
    assert_eq!(m.read_string("tls.crt"), cert, "issued once");
    assert_eq!(count(&m.stderr(), "issued a dynamic secret"), 1);
    let issued = cx.bao.call(
        Method::from_bytes(b"LIST").expect("LIST"),
        &format!("{pki}/certs"),
        None,
    );
    assert_eq!(
        issued.1["data"]["keys"].as_array().map(Vec::len),
        Some(2),
        "the root and one issued certificate: {}",
        issued.1
    );
    assert!(!m.stderr().contains("PRIVATE KEY"), "the key was logged");
    m.stop();
}
