//! Test 7: bad input. Each case must exit non-zero, name the culprit on stderr, never print the
//! secret value (or the token), leave nothing mounted and no process running.
//! (`mount_expect_failure` checks exit status, mounts, processes and the ready line.)

use std::path::PathBuf;

use serde_json::json;

use crate::harness::{
    Ctx, MountOpts, Mounted, mount_expect_failure, mounts_at, obj, objects_yaml, setup, spc_yaml,
    unique,
};

/// Runs a failing mount and checks stderr: it names at least one of `culprits`, and contains
/// none of `secrets`.
fn expect_failure(label: &str, opts: MountOpts, culprits: &[&str], secrets: &[&str]) -> String {
    let f = mount_expect_failure(label, opts);
    eprintln!(
        "[{label}] exit {} after {:?}; stderr: {}",
        f.status,
        f.took,
        f.stderr.trim_end()
    );
    assert!(
        culprits.iter().any(|c| f.stderr.contains(c)),
        "[{label}] stderr does not name the culprit (any of {culprits:?}):\n{}",
        f.stderr
    );
    for s in secrets {
        assert!(
            !f.stderr.contains(s) && !f.stdout.contains(s),
            "[{label}] a secret value/credential was printed: {s:?}\nstderr:\n{}",
            f.stderr
        );
    }
    f.stderr
}

/// A KV v2 secret `{key: <unique value>}`; returns (secretPath, value).
fn secret(cx: &Ctx, key: &str, value_prefix: &str) -> (String, String) {
    let name = unique("err");
    let value = unique(value_prefix);
    cx.bao.kv2_put(&name, json!({ key: value }));
    (format!("secret/data/{name}"), value)
}

fn spc_with(cx: &Ctx, name: &str, objects: &[crate::harness::Obj]) -> String {
    spc_yaml(name, &cx.bao.addr, "errors", objects)
}

#[test]
fn malformed_yaml() {
    let Some(cx) = setup() else { return };
    let spc = "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nspec: [unclosed\n  parameters: {\n";
    expect_failure(
        "malformed-yaml",
        MountOpts::new(&cx, spc.to_string()),
        &["spc.yaml", "YAML", "yaml"],
        &[],
    );
}

#[test]
fn unknown_provider() {
    let Some(cx) = setup() else { return };
    let (path, value) = secret(&cx, "k", "LEAK");
    let spc = spc_with(&cx, &unique("prov"), &[obj("k", &path, Some("k"))])
        .replace("provider: openbao", "provider: azure-keyvault");
    expect_failure(
        "unknown-provider",
        MountOpts::new(&cx, spc),
        &["azure-keyvault"],
        &[&value],
    );
}

#[test]
fn missing_role_name() {
    let Some(cx) = setup() else { return };
    let (path, value) = secret(&cx, "k", "LEAK");
    let spc = spc_with(&cx, &unique("norole"), &[obj("k", &path, Some("k"))]);
    let spc = drop_line(&spc, "roleName:");
    expect_failure(
        "missing-roleName",
        MountOpts::new(&cx, spc),
        &["roleName"],
        &[&value],
    );
}

#[test]
fn missing_address() {
    let Some(cx) = setup() else { return };
    let (path, value) = secret(&cx, "k", "LEAK");
    let spc = spc_with(&cx, &unique("noaddr"), &[obj("k", &path, Some("k"))]);
    let spc = drop_line(&spc, "vaultAddress:");
    expect_failure(
        "missing-vaultAddress",
        MountOpts::new(&cx, spc),
        &["vaultAddress", "address"],
        &[&value],
    );
}

#[test]
fn missing_objects() {
    let Some(cx) = setup() else { return };
    let spc = format!(
        "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: {}\n\
         spec:\n  provider: openbao\n  parameters:\n    vaultAddress: \"{}\"\n    roleName: r\n",
        unique("noobj"),
        cx.bao.addr
    );
    expect_failure(
        "missing-objects",
        MountOpts::new(&cx, spc),
        &["objects"],
        &[],
    );
}

#[test]
fn empty_objects_list() {
    let Some(cx) = setup() else { return };
    let spc = spc_with(&cx, &unique("emptyobj"), &[]).replace("objects: |\n", "objects: \"[]\"\n");
    expect_failure("empty-objects", MountOpts::new(&cx, spc), &["objects"], &[]);
}

#[test]
fn object_name_with_dotdot() {
    let Some(cx) = setup() else { return };
    let (path, value) = secret(&cx, "k", "LEAK");
    for bad in ["../escape", "a/../../escape", ".."] {
        let spc = spc_with(
            &cx,
            &unique("dotdot"),
            &[obj("fine", &path, Some("k")), obj(bad, &path, Some("k"))],
        );
        expect_failure(
            &format!("objectName {bad}"),
            MountOpts::new(&cx, spc),
            &[bad],
            &[&value],
        );
    }
}

#[test]
fn absolute_object_name() {
    let Some(cx) = setup() else { return };
    let (path, value) = secret(&cx, "k", "LEAK");
    let bad = "/etc/baofs-absolute";
    let spc = spc_with(&cx, &unique("abs"), &[obj(bad, &path, Some("k"))]);
    expect_failure(
        "absolute-objectName",
        MountOpts::new(&cx, spc),
        &[bad],
        &[&value],
    );
}

#[test]
fn duplicate_object_name() {
    let Some(cx) = setup() else { return };
    let (path, value) = secret(&cx, "k", "LEAK");
    let spc = spc_with(
        &cx,
        &unique("dup"),
        &[
            obj("dup-name", &path, Some("k")),
            obj("other", &path, Some("k")),
            obj("dup-name", &path, Some("k")),
        ],
    );
    expect_failure(
        "duplicate-objectName",
        MountOpts::new(&cx, spc),
        &["dup-name"],
        &[&value],
    );
}

#[test]
fn unknown_encoding() {
    let Some(cx) = setup() else { return };
    let (path, value) = secret(&cx, "k", "LEAK");
    let spc = spc_with(
        &cx,
        &unique("enc"),
        &[obj("k", &path, Some("k")).encoding("rot13")],
    );
    expect_failure(
        "unknown-encoding",
        MountOpts::new(&cx, spc),
        &["rot13"],
        &[&value],
    );
}

#[test]
fn undecodable_value() {
    let Some(cx) = setup() else { return };
    for enc in ["base64", "hex"] {
        // Not valid base64 (`*`, `!`) nor hex (`L`, `K`...).
        let (path, value) = secret(&cx, "k", "LEAK*not!decodable");
        let spc = spc_with(
            &cx,
            &unique("undec"),
            &[obj("undecodable-obj", &path, Some("k")).encoding(enc)],
        );
        expect_failure(
            &format!("undecodable-{enc}"),
            MountOpts::new(&cx, spc),
            &["undecodable-obj"],
            &[&value, "LEAK"],
        );
    }
}

#[test]
fn secret_key_missing() {
    let Some(cx) = setup() else { return };
    let (path, value) = secret(&cx, "present", "LEAK");
    let spc = spc_with(
        &cx,
        &unique("nokey"),
        &[obj("keyless-obj", &path, Some("absent-key"))],
    );
    expect_failure(
        "secretKey-missing",
        MountOpts::new(&cx, spc),
        &["absent-key", "keyless-obj"],
        &[&value],
    );
}

#[test]
fn forbidden_403() {
    let Some(cx) = setup() else { return };
    let (path, value) = secret(&cx, "k", "LEAK");
    let spc = spc_with(&cx, &unique("forbidden"), &[obj("k", &path, Some("k"))]);
    let token = unique("s.bogus-token");
    let mut opts = MountOpts::new(&cx, spc);
    opts.token = Some(token.clone());
    let stderr = expect_failure("403", opts, &["403"], &[&value, &token]);
    let name = path.trim_start_matches("secret/data/");
    assert!(
        stderr.contains(name),
        "403 error should name the secret path: {stderr}"
    );
}

#[test]
fn not_found_404() {
    let Some(cx) = setup() else { return };
    let name = unique("does-not-exist");
    let spc = spc_with(
        &cx,
        &unique("missing"),
        &[obj("k", &format!("secret/data/{name}"), Some("k"))],
    );
    let stderr = expect_failure("404", MountOpts::new(&cx, spc), &["404"], &[]);
    assert!(
        stderr.contains(&name),
        "404 error should name the secret path: {stderr}"
    );
}

#[test]
fn openbao_unreachable() {
    let Some(cx) = setup() else { return };
    // A loopback port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let addr = format!("http://127.0.0.1:{port}");
    let spc = spc_yaml(
        &unique("unreach"),
        &addr,
        "errors",
        &[obj("k", "secret/data/whatever", Some("k"))],
    );
    expect_failure(
        "unreachable",
        MountOpts::new(&cx, spc),
        &[&format!("127.0.0.1:{port}")],
        &[],
    );
}

#[test]
fn value_over_max_object_size() {
    let Some(cx) = setup() else { return };
    let name = unique("big");
    let value = format!("LEAK{}", "x".repeat(100));
    cx.bao.kv2_put(&name, json!({ "k": value, "small": "ok" }));
    let path = format!("secret/data/{name}");
    let spc = spc_with(
        &cx,
        &unique("big"),
        &[
            obj("small-obj", &path, Some("small")),
            obj("oversized-obj", &path, Some("k")),
        ],
    );
    expect_failure(
        "max-object-size",
        MountOpts::new(&cx, spc).args(&["--max-object-size", "64"]),
        &["oversized-obj"],
        &[&value, "LEAKxxxx"],
    );
}

#[test]
fn target_missing() {
    let Some(cx) = setup() else { return };
    let (path, value) = secret(&cx, "k", "LEAK");
    let spc = spc_with(&cx, &unique("notarget"), &[obj("k", &path, Some("k"))]);
    let target: PathBuf = std::env::temp_dir().join(unique("baofs-no-such-target"));
    let mut opts = MountOpts::new(&cx, spc);
    opts.target = Some(target.clone());
    expect_failure(
        "target-missing",
        opts,
        &[target.to_str().expect("utf-8")],
        &[&value],
    );
    assert!(!target.exists(), "baofs created the missing target");
}

#[test]
fn target_already_a_mount() {
    let Some(cx) = setup() else { return };
    let (path, value) = secret(&cx, "k", "first");
    let spc = spc_with(&cx, &unique("first"), &[obj("k", &path, Some("k"))]);
    let first = Mounted::start(MountOpts::new(&cx, spc));
    let before = mounts_at(&first.target).len();

    let (path2, value2) = secret(&cx, "k", "LEAK");
    let spc2 = spc_with(&cx, &unique("second"), &[obj("k", &path2, Some("k"))]);
    let mut opts = MountOpts::new(&cx, spc2);
    opts.target = Some(first.target.clone());
    expect_failure(
        "target-already-mounted",
        opts,
        &[first.target.to_str().expect("utf-8")],
        &[&value2],
    );
    // The first mount is untouched and still serves.
    assert_eq!(mounts_at(&first.target).len(), before);
    assert_eq!(first.read_string("k"), value);
    first.stop();
}

#[test]
fn bad_cli_values() {
    let Some(cx) = setup() else { return };
    let (path, value) = secret(&cx, "k", "LEAK");
    let spc = spc_with(&cx, &unique("cli"), &[obj("k", &path, Some("k"))]);
    expect_failure(
        "bad-interval",
        MountOpts::new(&cx, spc.clone()).interval("soon"),
        &["soon"],
        &[&value],
    );
    let mut opts = MountOpts::new(&cx, spc);
    opts.token = None;
    opts.extra = vec!["--token-file".into(), "/nonexistent/baofs-token".into()];
    expect_failure(
        "missing-token-file",
        opts,
        &["/nonexistent/baofs-token"],
        &[&value],
    );
}

/// `yaml` without the line containing `needle`.
fn drop_line(yaml: &str, needle: &str) -> String {
    let out: Vec<&str> = yaml.lines().filter(|l| !l.contains(needle)).collect();
    assert_eq!(
        out.len() + 1,
        yaml.lines().count(),
        "{needle} not found once"
    );
    out.join("\n") + "\n"
}

/// Keeps `objects_yaml` in use for ad-hoc SPCs (and documents the format in failures).
#[test]
fn objects_yaml_format() {
    let y = objects_yaml(&[obj("a", "secret/data/x", Some("k")).perm("0600")], 2);
    assert_eq!(
        y,
        "  - objectName: \"a\"\n    secretPath: \"secret/data/x\"\n    secretKey: \"k\"\n    filePermission: 0600\n"
    );
}
