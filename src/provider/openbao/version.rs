//! Object versions: a stable identifier of an object's content that reveals nothing about it
//! (anchors.md §14, improved).
//!
//! Upstream hashes `json(secretConfig) || content` with HMAC-SHA256 under a key kept in a
//! Kubernetes Secret. baofs does the same with a key of 32 random bytes drawn when the provider
//! is built, held only inside the HMAC context (locked memory, never written, logged or sent), and
//! adds the KV v2 metadata version when there is one (`v3-…`), which upstream never exposes
//! (VCP#124, VCP#146). Including the object's configuration keeps two objects with equal content
//! from showing equal versions. A restart draws a new key, so versions are stable within one
//! process: exactly what "did this file change" needs.

use std::fmt;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use crate::spc::ObjectSpec;

/// Bytes of the HMAC tag kept in a version (128 bits: collisions are out of reach).
const TAG_BYTES: usize = 16;

/// Bytes of a version key.
pub const KEY_BYTES: usize = 32;

/// The process's version key. The raw bytes are kept (zeroized on drop) only so a successor
/// process can be handed the same key after a restart (see `takeover`): versions then stay
/// stable across restarts, which is how the successor knows a file did not change.
pub(crate) struct VersionKey {
    key: hmac::Key,
    raw: Zeroizing<[u8; KEY_BYTES]>,
}

impl VersionKey {
    /// Draws a fresh random key. Fails only if the system's random source does.
    pub(crate) fn generate() -> Result<Self, String> {
        let mut raw = Zeroizing::new([0u8; KEY_BYTES]);
        SystemRandom::new()
            .fill(&mut raw[..])
            .map_err(|_| "the system random source failed".to_owned())?;
        Ok(Self::from_raw(raw))
    }

    /// The key a predecessor process used.
    pub(crate) fn from_raw(raw: Zeroizing<[u8; KEY_BYTES]>) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &raw[..]),
            raw,
        }
    }

    /// The raw key, to hand to a successor.
    pub(crate) fn raw(&self) -> &[u8; KEY_BYTES] {
        &self.raw
    }

    /// The version of `object` holding `content`; `kv2_version` is the KV v2 secret's
    /// `metadata.version` when the object was read from KV v2.
    pub(crate) fn version(
        &self,
        object: &ObjectSpec,
        content: &[u8],
        kv2_version: Option<u64>,
    ) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        let args = object
            .secret_args
            .as_ref()
            .map(|a| serde_json::Value::Object(a.clone()).to_string())
            .unwrap_or_default();
        let mode = object.mode.map(|m| m.to_string()).unwrap_or_default();
        // Length-prefixed fields, so no two configurations hash the same input.
        for field in [
            object.path.as_str(),
            object.secret_path.as_str(),
            object.secret_key.as_deref().unwrap_or(""),
            object.method.as_str(),
            args.as_str(),
            object.encoding.as_str(),
            mode.as_str(),
        ] {
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field.as_bytes());
        }
        ctx.update(&(content.len() as u64).to_be_bytes());
        ctx.update(content);
        let tag = ctx.sign();
        let mac = URL_SAFE_NO_PAD.encode(&tag.as_ref()[..TAG_BYTES]);
        match kv2_version {
            Some(v) => format!("v{v}-{mac}"),
            None => mac,
        }
    }
}

impl fmt::Debug for VersionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VersionKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spc::SecretProviderClass;

    fn objects() -> Vec<ObjectSpec> {
        SecretProviderClass::from_yaml(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\n\
             metadata: {name: v}\nspec:\n  provider: openbao\n  parameters:\n    roleName: r\n    \
             objects: |\n      - {objectName: a, secretPath: secret/data/x, secretKey: k}\n      \
             - {objectName: b, secretPath: secret/data/x, secretKey: k}\n      \
             - {objectName: c, secretPath: pki/issue/r, method: PUT, secretArgs: {common_name: a}}\n      \
             - {objectName: d, secretPath: pki/issue/r, method: PUT, secretArgs: {common_name: b}}\n",
        )
        .expect("spc")
        .objects
    }

    #[test]
    fn stable_per_content_and_config_and_never_the_value() {
        let key = VersionKey::generate().expect("random");
        let o = objects();
        let v = key.version(&o[0], b"hunter2", None);
        assert_eq!(v, key.version(&o[0], b"hunter2", None), "stable");
        assert_eq!(v.len(), 22);
        assert!(
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(
            v,
            key.version(&o[0], b"hunter3", None),
            "content changes it"
        );
        assert_ne!(
            v,
            key.version(&o[1], b"hunter2", None),
            "other object, same content"
        );
        assert_ne!(
            key.version(&o[2], b"cert", None),
            key.version(&o[3], b"cert", None),
            "secretArgs are part of the config"
        );
        assert!(!v.contains("hunter2"));
        let kv = key.version(&o[0], b"hunter2", Some(7));
        assert!(kv.starts_with("v7-") && kv.ends_with(&v), "{kv}");
        // Another key (another process) gives other versions: nothing to precompute.
        let other = VersionKey::generate().expect("random");
        assert_ne!(v, other.version(&o[0], b"hunter2", None));
        assert_eq!(format!("{key:?}"), "VersionKey(<redacted>)");
    }
}
