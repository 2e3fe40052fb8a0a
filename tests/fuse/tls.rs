//! TLS to OpenBao (issue 3): `<P>CACertPath`, `<P>CADirectory`, `<P>TLSServerName`, client
//! certificates and `<P>SkipTLSVerify`, against the second OpenBao that `scripts/test.sh` starts
//! (`peers_bao_tls_start`): TLS listeners with a server certificate for 127.0.0.1, one only for
//! `bao.test`, one that requires a client certificate and one with an expired certificate, all
//! from a test CA made with openssl. Each failure must say which check failed.

use std::path::PathBuf;

use serde_json::json;

use crate::harness::{
    Bao, Ctx, MountOpts, Mounted, mount_expect_failure, obj, setup, spc_yaml_with, unique,
};

/// The second OpenBao and its TLS material.
pub(crate) struct TlsEnv {
    /// Setup client (plain HTTP listener, root token).
    pub(crate) bao: Bao,
    /// ca.crt, ca-dir/, other-ca.crt, client.crt, client.key.
    pub(crate) dir: PathBuf,
    /// Listener with a certificate for 127.0.0.1.
    pub(crate) tls: String,
    /// Listener with a certificate only for `bao.test`.
    pub(crate) named: String,
    /// Listener that requires a client certificate signed by the test CA.
    pub(crate) mtls: String,
    /// Listener with an expired certificate.
    pub(crate) expired: String,
}

/// A variable `scripts/test.sh` exports.
pub(crate) fn test_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with `scripts/test.sh` (it starts the peers), or \
             set BAOFS_SKIP_FUSE=1 to skip the FUSE tests"
        )
    })
}

pub(crate) fn tls_env() -> TlsEnv {
    TlsEnv {
        bao: Bao::new(&test_env("BAOFS_TEST_BAO2_ADDR"), "root"),
        dir: PathBuf::from(test_env("BAOFS_TEST_TLS_DIR")),
        tls: test_env("BAOFS_TEST_BAO_TLS_ADDR"),
        named: test_env("BAOFS_TEST_BAO_TLS_NAMED_ADDR"),
        mtls: test_env("BAOFS_TEST_BAO_MTLS_ADDR"),
        expired: test_env("BAOFS_TEST_BAO_TLS_EXPIRED_ADDR"),
    }
}

impl TlsEnv {
    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A secret on the second server: its SPC object path and value.
fn secret(env: &TlsEnv) -> (String, String) {
    let name = unique("tls");
    let value = unique("tls-value");
    env.bao.kv2_put(&name, json!({ "v": value }));
    (format!("secret/data/{name}"), value)
}

/// A case: what it checks, the address, the SPC parameters.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

fn opts(cx: &Ctx, addr: &str, params: &[(&str, &str)], path: &str) -> MountOpts {
    let spc = spc_yaml_with(
        &unique("tls"),
        addr,
        "tls",
        params,
        &[obj("v", path, Some("v"))],
    );
    MountOpts::new(cx, spc)
}

#[test]
fn tls_with_ca_file_ca_directory_server_name_and_client_certificate() {
    let Some(cx) = setup() else { return };
    let env = tls_env();
    let (path, value) = secret(&env);
    let (ca, ca_dir) = (env.file("ca.crt"), env.file("ca-dir"));
    let (cert, key) = (env.file("client.crt"), env.file("client.key"));
    let cases: Vec<Case> = vec![
        ("CA file", &env.tls, vec![("vaultCACertPath", &ca)]),
        ("CA directory", &env.tls, vec![("baoCADirectory", &ca_dir)]),
        (
            "CA file wins over a CA directory without our CA",
            &env.tls,
            vec![
                ("openbaoCACertPath", &ca),
                ("openbaoCADirectory", "/nonexistent"),
            ],
        ),
        (
            "server name override",
            &env.named,
            vec![
                ("openbaoCACertPath", &ca),
                ("openbaoTLSServerName", "bao.test"),
            ],
        ),
        (
            "client certificate",
            &env.mtls,
            vec![
                ("vaultCACertPath", &ca),
                ("vaultTLSClientCertPath", &cert),
                ("vaultTLSClientKeyPath", &key),
            ],
        ),
    ];
    for (what, addr, params) in cases {
        let m = Mounted::try_start(opts(&cx, addr, &params, &path))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(m.read_string("v"), value, "{what}");
        let stderr = m.stderr();
        assert!(!stderr.contains(&value), "{what}: the value was logged");
        m.stop();
    }
}

#[test]
fn tls_failures_say_which_check_failed() {
    let Some(cx) = setup() else { return };
    let env = tls_env();
    let (path, value) = secret(&env);
    let (ca, other) = (env.file("ca.crt"), env.file("other-ca.crt"));
    let cases: Vec<(Case, &[&str])> = vec![
        (
            ("wrong CA", &env.tls, vec![("vaultCACertPath", &other)]),
            &["unknown CA", "CACertPath"],
        ),
        (
            ("wrong name", &env.named, vec![("vaultCACertPath", &ca)]),
            &["name mismatch", "'127.0.0.1'", "bao.test", "TLSServerName"],
        ),
        (
            (
                "wrong server name override",
                &env.tls,
                vec![
                    ("vaultCACertPath", &ca),
                    ("vaultTLSServerName", "other.test"),
                ],
            ),
            &["name mismatch", "other.test"],
        ),
        (
            (
                "missing client certificate",
                &env.mtls,
                vec![("vaultCACertPath", &ca)],
            ),
            &["client certificate refused", "TLSClientCertPath"],
        ),
        (
            (
                "expired server certificate",
                &env.expired,
                vec![("vaultCACertPath", &ca)],
            ),
            &["expired certificate", "expired at"],
        ),
        (
            (
                "CA file missing",
                &env.tls,
                vec![("vaultCACertPath", "/nonexistent/ca.pem")],
            ),
            &["'<prefix>CACertPath'", "/nonexistent/ca.pem"],
        ),
    ];
    for ((what, addr, params), expected) in cases {
        let f = mount_expect_failure(what, opts(&cx, addr, &params, &path));
        for e in expected {
            assert!(
                f.stderr.contains(e),
                "[{what}] stderr should contain {e:?}:\n{}",
                f.stderr
            );
        }
        assert!(!f.stderr.contains(&value), "[{what}] the value was logged");
        assert!(
            f.took.as_secs() < 20,
            "[{what}] a certificate problem is not retried ({:?})",
            f.took
        );
    }
}

#[test]
fn skip_tls_verify_connects_and_warns_loudly() {
    let Some(cx) = setup() else { return };
    let env = tls_env();
    let (path, value) = secret(&env);
    let m = Mounted::start(opts(
        &cx,
        &env.named,
        &[("baoSkipTLSVerify", "true")],
        &path,
    ));
    assert_eq!(m.read_string("v"), value);
    let stderr = m.stderr();
    assert!(
        stderr.contains("TLS CERTIFICATE VERIFICATION IS DISABLED") && stderr.contains("WARN"),
        "expected a loud warning:\n{stderr}"
    );
    m.stop();
}
