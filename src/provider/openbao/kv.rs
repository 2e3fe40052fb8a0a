//! KV v1/v2 extraction: pure functions from a parsed OpenBao response to an object's bytes
//! (anchors.md §12, improved). No HTTP here, so everything is unit-testable.
//!
//! - KV v2 is recognised when the response's `data` has both a `data` key (object, or null
//!   for a deleted or destroyed version) and a `metadata` object; its payload is `data.data`.
//!   Anything else (KV v1, dynamic engines) has `data` as payload. Unlike upstream, a KV v1
//!   secret with a map-valued key named `data` is not mistaken for KV v2.
//! - With `secretKey`: that top-level key of the payload; strings raw, other values as compact
//!   JSON. Then `encoding` is applied.
//! - Without `secretKey`: the payload only (no `request_id`/lease envelope, no metadata) as
//!   compact JSON with sorted keys, so the content is stable across reads. As upstream,
//!   `encoding` is not applied to a whole secret.
//!
//! Errors never contain a value.

use std::io;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use zeroize::Zeroize;

use crate::secret::SecretBytes;
use crate::spc::{Encoding, ObjectSpec};

/// Why a value could not be extracted from a response. Never contains a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// The response has no `data` (or it is null).
    #[error("the response has no data")]
    NoData,
    /// `secretKey` is not a top-level key of the payload.
    #[error("key '{0}' does not exist")]
    KeyNotFound(String),
    /// The KV v2 version is deleted or destroyed (`data.data` is null).
    #[error("the secret version is deleted or destroyed")]
    DeletedVersion,
    /// The value is not valid in its declared encoding.
    #[error("the value is not valid {0}")]
    Decode(Encoding),
    /// The value is over the size limit.
    #[error("the value is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The value's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// Whether a response's `data` has the KV v2 shape: a `data` key (object or null) and a
/// `metadata` object.
pub fn is_kv2(data: &Value) -> bool {
    let Some(obj) = data.as_object() else {
        return false;
    };
    matches!(obj.get("data"), Some(Value::Object(_) | Value::Null))
        && matches!(obj.get("metadata"), Some(Value::Object(_)))
}

/// Whether a response (e.g. the body of a 404) describes a deleted or destroyed KV v2 version.
pub fn is_deleted_version(response: &Value) -> bool {
    response
        .get("data")
        .is_some_and(|d| is_kv2(d) && d.get("data").is_some_and(Value::is_null))
}

/// The KV v2 `metadata.version` of a response, if it is a KV v2 read.
pub fn kv2_version(response: &Value) -> Option<u64> {
    let data = response.get("data")?;
    if !is_kv2(data) {
        return None;
    }
    data.get("metadata")?.get("version")?.as_u64()
}

/// The payload of a response: `data.data` for KV v2, `data` otherwise.
pub fn payload(response: &Value) -> Result<&Value, ExtractError> {
    let data = response
        .get("data")
        .filter(|d| !d.is_null())
        .ok_or(ExtractError::NoData)?;
    if is_kv2(data) {
        match data.get("data") {
            Some(Value::Null) | None => Err(ExtractError::DeletedVersion),
            Some(inner) => Ok(inner),
        }
    } else {
        Ok(data)
    }
}

/// Extracts `object`'s value from a parsed response, applying `secretKey`, `encoding` and the
/// size limit.
pub fn extract(
    response: &Value,
    object: &ObjectSpec,
    max_size: usize,
) -> Result<SecretBytes, ExtractError> {
    let payload = payload(response)?;
    let value = match &object.secret_key {
        None => to_sorted_json(payload),
        Some(key) => {
            let v = payload
                .as_object()
                .and_then(|m| m.get(key))
                .ok_or_else(|| ExtractError::KeyNotFound(key.clone()))?;
            let raw = match v {
                Value::String(s) => copy_bytes(s.as_bytes()),
                other => to_sorted_json(other),
            };
            decode(raw, object.encoding)?
        }
    };
    if value.len() > max_size {
        let size = value.len();
        let mut value = value;
        value.zeroize();
        return Err(ExtractError::TooLarge {
            size,
            limit: max_size,
        });
    }
    Ok(SecretBytes::from_vec(value))
}

/// Decodes `raw` (which is wiped) according to `encoding`.
pub fn decode(raw: Vec<u8>, encoding: Encoding) -> Result<Vec<u8>, ExtractError> {
    let mut raw = ZeroizingBuf::from_vec(raw);
    match encoding {
        Encoding::Utf8 => Ok(raw.into_vec()),
        Encoding::Base64 => {
            // Go's base64.StdEncoding ignores CR and LF (wrapped `base64` output).
            let mut input = ZeroizingBuf::with_capacity(raw.len());
            for chunk in raw.as_slice().split(|b| *b == b'\n' || *b == b'\r') {
                input.extend_from_slice(chunk);
            }
            raw.clear();
            let mut out = ZeroizingBuf::with_capacity(base64::decoded_len_estimate(input.len()));
            BASE64
                .decode_vec(input.as_slice(), &mut out.0)
                .map_err(|_| ExtractError::Decode(Encoding::Base64))?;
            Ok(out.into_vec())
        }
        Encoding::Hex => {
            let input = raw.as_slice();
            if !input.len().is_multiple_of(2) {
                return Err(ExtractError::Decode(Encoding::Hex));
            }
            let mut out = ZeroizingBuf::with_capacity(input.len() / 2);
            for pair in input.chunks_exact(2) {
                match (hex_digit(pair[0]), hex_digit(pair[1])) {
                    (Some(h), Some(l)) => out.0.push(h << 4 | l),
                    _ => return Err(ExtractError::Decode(Encoding::Hex)),
                }
            }
            Ok(out.into_vec())
        }
    }
}

/// Go's `base64.StdEncoding`: standard alphabet, padding required, non-zero trailing bits
/// allowed.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn copy_bytes(b: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(b.len());
    v.extend_from_slice(b);
    v
}

/// Compact JSON with object keys sorted (whatever serde_json's map order is), written into a
/// buffer that wipes every allocation it leaves behind.
pub fn to_sorted_json(v: &Value) -> Vec<u8> {
    let mut buf = ZeroizingBuf::with_capacity(256);
    // Serializing a `Value` into memory cannot fail: keys are strings, numbers finite.
    if serde_json::to_writer(&mut buf, &Sorted(v)).is_err() {
        buf.clear();
    }
    buf.into_vec()
}

struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(m) => {
                let mut entries: Vec<(&String, &Value)> = m.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, &Sorted(v))?;
                }
                map.end()
            }
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&Sorted(v))?;
                }
                seq.end()
            }
            other => other.serialize(s),
        }
    }
}

/// Wipes every string of a parsed response (best effort: numbers cannot be wiped).
pub fn zeroize_value(v: Value) {
    match v {
        Value::String(mut s) => s.zeroize(),
        Value::Array(items) => items.into_iter().for_each(zeroize_value),
        Value::Object(map) => {
            for (mut k, v) in map {
                k.zeroize();
                zeroize_value(v);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A byte buffer that wipes its old allocation when it grows and its contents when dropped.
#[derive(Default)]
pub(crate) struct ZeroizingBuf(Vec<u8>);

impl ZeroizingBuf {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub(crate) fn from_vec(v: Vec<u8>) -> Self {
        Self(v)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn clear(&mut self) {
        self.0.zeroize();
    }

    pub(crate) fn extend_from_slice(&mut self, data: &[u8]) {
        let needed = self.0.len().saturating_add(data.len());
        if needed > self.0.capacity() {
            let mut grown = Vec::with_capacity(needed.max(self.0.capacity().saturating_mul(2)));
            grown.extend_from_slice(&self.0);
            self.0.zeroize();
            self.0 = grown;
        }
        self.0.extend_from_slice(data);
    }

    /// The contents; the caller takes over wiping them.
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for ZeroizingBuf {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl io::Write for ZeroizingBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spc::ObjectPath;
    use serde_json::json;

    fn object(key: Option<&str>, encoding: Encoding) -> ObjectSpec {
        ObjectSpec {
            path: ObjectPath::parse("obj").expect("valid"),
            secret_path: "secret/data/app".into(),
            secret_key: key.map(str::to_owned),
            mode: None,
            encoding,
            method: crate::spc::ObjectMethod::Get,
            secret_args: None,
        }
    }

    fn get(resp: &Value, key: Option<&str>, enc: Encoding) -> Result<Vec<u8>, ExtractError> {
        extract(resp, &object(key, enc), 1 << 20).map(|v| v.expose().to_vec())
    }

    fn kv2() -> Value {
        json!({
            "request_id": "5e1b6e1c-0000",
            "lease_id": "", "lease_duration": 0, "renewable": false,
            "data": {
                "data": {"password": "hunter2", "port": 5432, "nested": {"b": 2, "a": [1, "x"]},
                         "flag": true, "b64": "aGVsbG8=", "hex": "68656C6c6f", "none": null},
                "metadata": {"version": 3, "created_time": "2026-01-01T00:00:00Z",
                             "deletion_time": "", "destroyed": false}
            },
            "warnings": null
        })
    }

    fn kv1() -> Value {
        json!({"request_id": "r", "lease_duration": 2764800,
               "data": {"password": "pw1", "data": {"inner": 1}, "z": "last", "a": "first"}})
    }

    #[test]
    fn kv2_secret_key_string_is_raw() {
        assert_eq!(
            get(&kv2(), Some("password"), Encoding::Utf8).expect("ok"),
            b"hunter2"
        );
    }

    #[test]
    fn kv2_secret_key_non_strings_are_compact_json() {
        assert_eq!(
            get(&kv2(), Some("port"), Encoding::Utf8).expect("ok"),
            b"5432"
        );
        assert_eq!(
            get(&kv2(), Some("flag"), Encoding::Utf8).expect("ok"),
            b"true"
        );
        assert_eq!(
            get(&kv2(), Some("none"), Encoding::Utf8).expect("ok"),
            b"null"
        );
        assert_eq!(
            get(&kv2(), Some("nested"), Encoding::Utf8).expect("ok"),
            br#"{"a":[1,"x"],"b":2}"#
        );
    }

    #[test]
    fn kv2_whole_secret_is_payload_only_sorted() {
        let v = get(&kv2(), None, Encoding::Utf8).expect("ok");
        assert_eq!(
            String::from_utf8(v).expect("utf8"),
            r#"{"b64":"aGVsbG8=","flag":true,"hex":"68656C6c6f","nested":{"a":[1,"x"],"b":2},"none":null,"password":"hunter2","port":5432}"#
        );
    }

    #[test]
    fn kv1_uses_data_even_with_a_data_key() {
        // Upstream misreads this as KV v2 (no `metadata` here).
        assert_eq!(
            get(&kv1(), Some("password"), Encoding::Utf8).expect("ok"),
            b"pw1"
        );
        assert_eq!(
            get(&kv1(), Some("data"), Encoding::Utf8).expect("ok"),
            br#"{"inner":1}"#
        );
        assert_eq!(
            get(&kv1(), None, Encoding::Utf8).expect("ok"),
            br#"{"a":"first","data":{"inner":1},"password":"pw1","z":"last"}"#
        );
    }

    #[test]
    fn whole_secret_is_stable_across_request_ids() {
        let mut other = kv2();
        other["request_id"] = json!("another-id");
        assert_eq!(
            get(&kv2(), None, Encoding::Utf8).expect("ok"),
            get(&other, None, Encoding::Utf8).expect("ok")
        );
    }

    #[test]
    fn missing_key() {
        assert_eq!(
            get(&kv2(), Some("nope"), Encoding::Utf8),
            Err(ExtractError::KeyNotFound("nope".into()))
        );
        // `metadata` is not part of the KV v2 payload.
        assert_eq!(
            get(&kv2(), Some("metadata"), Encoding::Utf8),
            Err(ExtractError::KeyNotFound("metadata".into()))
        );
    }

    #[test]
    fn deleted_version() {
        let resp = json!({"data": {"data": null, "metadata": {"version": 2,
            "deletion_time": "2026-01-01T00:00:00Z", "destroyed": false}}});
        assert!(is_deleted_version(&resp));
        assert!(!is_deleted_version(&kv2()));
        assert_eq!(
            get(&resp, Some("a"), Encoding::Utf8),
            Err(ExtractError::DeletedVersion)
        );
        assert_eq!(
            get(&resp, None, Encoding::Utf8),
            Err(ExtractError::DeletedVersion)
        );
    }

    #[test]
    fn no_data() {
        for resp in [json!({}), json!({"data": null}), json!(null)] {
            assert_eq!(get(&resp, None, Encoding::Utf8), Err(ExtractError::NoData));
        }
    }

    #[test]
    fn encodings() {
        assert_eq!(
            get(&kv2(), Some("b64"), Encoding::Base64).expect("ok"),
            b"hello"
        );
        assert_eq!(
            get(&kv2(), Some("hex"), Encoding::Hex).expect("ok"),
            b"hello"
        );
        // Padding is required (as Go's StdEncoding); line breaks are ignored.
        assert_eq!(
            decode(b"aGVsbG8".to_vec(), Encoding::Base64),
            Err(ExtractError::Decode(Encoding::Base64))
        );
        assert_eq!(
            decode(b"aGVs\nbG8=\n".to_vec(), Encoding::Base64).expect("ok"),
            b"hello"
        );
        assert_eq!(
            get(&kv2(), Some("password"), Encoding::Base64),
            Err(ExtractError::Decode(Encoding::Base64))
        );
        assert_eq!(
            get(&kv2(), Some("password"), Encoding::Hex),
            Err(ExtractError::Decode(Encoding::Hex))
        );
        assert_eq!(
            decode(b"abc".to_vec(), Encoding::Hex),
            Err(ExtractError::Decode(Encoding::Hex))
        );
        assert_eq!(decode(Vec::new(), Encoding::Hex).expect("ok"), b"");
    }

    #[test]
    fn size_limit_applies_to_the_final_value() {
        let resp = json!({"data": {"big": "x".repeat(100), "b64": "eHh4eA=="}});
        assert_eq!(
            extract(&resp, &object(Some("big"), Encoding::Utf8), 99).map(|v| v.len()),
            Err(ExtractError::TooLarge {
                size: 100,
                limit: 99
            })
        );
        assert_eq!(
            extract(&resp, &object(Some("big"), Encoding::Utf8), 100).map(|v| v.len()),
            Ok(100)
        );
        // 8 encoded bytes, 4 decoded: the decoded size counts.
        assert_eq!(
            extract(&resp, &object(Some("b64"), Encoding::Base64), 4).map(|v| v.len()),
            Ok(4)
        );
        assert!(matches!(
            extract(&resp, &object(None, Encoding::Utf8), 10),
            Err(ExtractError::TooLarge { limit: 10, .. })
        ));
    }

    #[test]
    fn errors_never_show_values() {
        let msgs = [
            get(&kv2(), Some("password"), Encoding::Base64),
            get(&kv2(), Some("password"), Encoding::Hex),
            extract(&kv2(), &object(Some("password"), Encoding::Utf8), 3)
                .map(|v| v.expose().to_vec()),
        ];
        for m in msgs {
            let e = m.expect_err("fails");
            assert!(!format!("{e} {e:?}").contains("hunter2"));
        }
    }

    #[test]
    fn zeroizing_buf_grows_and_writes() {
        let mut b = ZeroizingBuf::with_capacity(1);
        for _ in 0..100 {
            b.extend_from_slice(b"abc");
        }
        assert_eq!(b.len(), 300);
        assert_eq!(b.into_vec(), b"abc".repeat(100));
        zeroize_value(kv2());
    }
}
