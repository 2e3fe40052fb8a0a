//! Secret value types: the only places secret bytes live.
//!
//! `SecretBytes` is an immutable, zeroized-on-drop buffer (`Zeroizing<Box<[u8]>>`, which cannot
//! reallocate and leave copies behind) shared by `Arc`, so a version can be served to several
//! readers and is wiped when the last one lets go. Its `Debug` prints only the length, and it has
//! no `Display`: a value cannot reach a log line or an error message by accident.
//!
//! `SecretString` is the same for credentials (OpenBao tokens, service-account JWTs).
//!
//! Both are allocated on the heap; the process locks its memory (`hardening`) so they are never
//! swapped out, and is non-dumpable so they never reach a core file.

use std::fmt;
use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

/// An immutable secret value, wiped when the last clone is dropped.
#[derive(Clone)]
pub struct SecretBytes(Arc<Zeroizing<Box<[u8]>>>);

impl SecretBytes {
    /// Takes ownership of `bytes`, moving them into a fixed-size zeroizing buffer. The vector's
    /// original allocation is wiped before it is freed.
    pub fn from_vec(mut bytes: Vec<u8>) -> Self {
        let boxed: Box<[u8]> = bytes.as_slice().into();
        bytes.zeroize();
        Self(Arc::new(Zeroizing::new(boxed)))
    }

    /// Copies `bytes` into a new zeroizing buffer.
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self(Arc::new(Zeroizing::new(bytes.into())))
    }

    /// The value. Callers must not copy it anywhere but into a reply to the kernel.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time-ish equality of two values (length is not secret).
    pub fn same_value(&self, other: &SecretBytes) -> bool {
        if Arc::ptr_eq(&self.0, &other.0) {
            return true;
        }
        let (a, b) = (self.expose(), other.expose());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted {} bytes>)", self.len())
    }
}

/// A credential (OpenBao token, JWT), wiped on drop, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Wraps `s`.
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// The credential. Only the HTTP layer that sends it may call this.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let v = SecretBytes::from_vec(b"hunter2".to_vec());
        let s = format!("{v:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("7 bytes"));
        let t = SecretString::new("s.token".into());
        assert!(!format!("{t:?}").contains("s.token"));
    }

    #[test]
    fn same_value_compares_content() {
        let a = SecretBytes::copy_from(b"abc");
        assert!(a.same_value(&SecretBytes::copy_from(b"abc")));
        assert!(!a.same_value(&SecretBytes::copy_from(b"abd")));
        assert!(!a.same_value(&SecretBytes::copy_from(b"ab")));
    }
}
