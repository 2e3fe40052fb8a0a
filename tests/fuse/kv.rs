//! Test 5: KV v1 and v2, secretKey vs whole secret, version pins, encodings.

use std::time::Duration;

use serde_json::json;

use crate::harness::{MountOpts, Mounted, obj, poll_until, setup, spc_yaml, unique};

#[test]
fn kv1_and_kv2_key_and_whole_secret() {
    let Some(cx) = setup() else { return };
    let v1 = unique("kvone");
    let v2 = unique("kvtwo");
    cx.bao.kv1_put(&v1, json!({"b": "2", "a": "1"}));
    cx.bao.kv2_put(
        &v2,
        json!({
            "zeta": "last",
            "alpha": "first",
            "n": 42,
            "flag": true,
            "obj": {"z": 1, "y": [true, null, "s"]},
            "quote": "he said \"hi\"\n"
        }),
    );
    let p1 = format!("kv1/{v1}");
    let p2 = format!("secret/data/{v2}");
    let spc = spc_yaml(
        &unique("kv"),
        &cx.bao.addr,
        "kv",
        &[
            obj("v1-key", &p1, Some("a")),
            obj("v1-whole", &p1, None),
            obj("v2-key", &p2, Some("alpha")),
            obj("v2-whole", &p2, None),
            obj("v2-number", &p2, Some("n")),
            obj("v2-bool", &p2, Some("flag")),
            obj("v2-object", &p2, Some("obj")),
            obj("v2-quote", &p2, Some("quote")),
        ],
    );
    let m = Mounted::start(MountOpts::new(&cx, spc));
    assert_eq!(m.read_string("v1-key"), "1");
    assert_eq!(m.read_string("v1-whole"), r#"{"a":"1","b":"2"}"#);
    assert_eq!(m.read_string("v2-key"), "first");
    assert_eq!(
        m.read_string("v2-whole"),
        r#"{"alpha":"first","flag":true,"n":42,"obj":{"y":[true,null,"s"],"z":1},"quote":"he said \"hi\"\n","zeta":"last"}"#,
        "whole KV v2 secret: the data only, compact JSON, sorted keys"
    );
    assert_eq!(m.read_string("v2-number"), "42");
    assert_eq!(m.read_string("v2-bool"), "true");
    assert_eq!(m.read_string("v2-object"), r#"{"y":[true,null,"s"],"z":1}"#);
    assert_eq!(
        m.read_string("v2-quote"),
        "he said \"hi\"\n",
        "string values are raw"
    );
    m.stop();
}

#[test]
fn version_pin_stays_put() {
    let Some(cx) = setup() else { return };
    let name = unique("pin");
    assert_eq!(cx.bao.kv2_put(&name, json!({"k": "one"})), 1);
    assert_eq!(cx.bao.kv2_put(&name, json!({"k": "two"})), 2);
    let path = format!("secret/data/{name}");
    let spc = spc_yaml(
        &unique("pin"),
        &cx.bao.addr,
        "pin",
        &[
            obj("pinned", &format!("{path}?version=1"), Some("k")),
            obj("latest", &path, Some("k")),
        ],
    );
    let m = Mounted::start(MountOpts::new(&cx, spc).interval("200ms"));
    assert_eq!(m.read_string("pinned"), "one");
    assert_eq!(m.read_string("latest"), "two");
    cx.bao.kv2_put(&name, json!({"k": "three"}));
    // Once the unpinned object shows v3, a poll has completed: the pin must still be v1.
    poll_until("latest to show v3", Duration::from_secs(10), || {
        (std::fs::read(m.path("latest")).ok()? == b"three").then_some(())
    });
    assert_eq!(m.read_string("pinned"), "one", "pinned version moved");
    m.stop();
}

#[test]
fn encodings_base64_hex_utf8() {
    let Some(cx) = setup() else { return };
    let name = unique("enc");
    let binary: &[u8] = &[0x00, 0xff, 0x10, 0x80, 0x0a, b'z', 0x00];
    // base64 of `binary`, computed by hand (no base64 dev-dependency): AP8QgAp6AA==
    let b64 = "AP8QgAp6AA==";
    let hex = "00ff10800a7a00";
    cx.bao.kv2_put(
        &name,
        json!({"b64": b64, "hex": hex, "text": "grüße ✓", "plain": "AP8QgAp6AA=="}),
    );
    let path = format!("secret/data/{name}");
    let spc = spc_yaml(
        &unique("enc"),
        &cx.bao.addr,
        "enc",
        &[
            obj("bin-b64", &path, Some("b64")).encoding("base64"),
            obj("bin-hex", &path, Some("hex")).encoding("hex"),
            obj("text", &path, Some("text")).encoding("utf-8"),
            obj("plain", &path, Some("plain")),
        ],
    );
    let m = Mounted::start(MountOpts::new(&cx, spc));
    assert_eq!(m.read("bin-b64"), binary, "base64-decoded bytes");
    assert_eq!(m.read("bin-hex"), binary, "hex-decoded bytes");
    assert_eq!(m.read("text"), "grüße ✓".as_bytes(), "utf-8 bytes");
    assert_eq!(
        m.read_string("plain"),
        b64,
        "default encoding is utf-8 (no decoding)"
    );
    assert_eq!(
        std::fs::metadata(m.path("bin-b64")).expect("stat").len(),
        binary.len() as u64
    );
    m.stop();
}

#[test]
fn address_aliases_and_bao_token_env() {
    let Some(cx) = setup() else { return };
    let name = unique("alias");
    cx.bao.kv2_put(&name, json!({"k": "aliased"}));
    let path = format!("secret/data/{name}");
    for param in ["baoAddress", "openbaoAddress"] {
        let spc = spc_yaml(
            &unique("alias"),
            &cx.bao.addr,
            "alias",
            &[obj("k", &path, Some("k"))],
        )
        .replace("vaultAddress:", &format!("{param}:"));
        let m = Mounted::start(MountOpts::new(&cx, spc));
        assert_eq!(m.read_string("k"), "aliased", "with {param}");
        m.stop();
    }
    // No --token-file: the token comes from $BAO_TOKEN.
    let spc = spc_yaml(
        &unique("envtok"),
        &cx.bao.addr,
        "alias",
        &[obj("k", &path, Some("k"))],
    );
    let mut opts = MountOpts::new(&cx, spc);
    opts.token = None;
    opts.env = vec![("BAO_TOKEN".into(), cx.bao.token.clone())];
    let m = Mounted::start(opts);
    assert_eq!(m.read_string("k"), "aliased", "with BAO_TOKEN");
    m.stop();
}
