//! The byte encoding of what the provider hands a successor process (login tokens, dynamic
//! secrets): big-endian `u64`s, length-prefixed texts, and times as wall-clock milliseconds
//! (an `Instant` means nothing in another process). Buffers hold secrets: they are built at
//! their exact size in `Zeroizing` memory (no reallocation leaves a copy) and only ever go into
//! `memfd_secret` memory.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

/// Wall-clock milliseconds of `at` (an `Instant`), 0 when it is not in the future.
pub(crate) fn wall_ms(at: Instant, now: Instant, wall_now: SystemTime) -> u64 {
    let Some(left) = at.checked_duration_since(now) else {
        return 0;
    };
    (wall_now + left)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The `Instant` of wall-clock milliseconds `ms`, `None` when it has passed.
pub(crate) fn instant_of(ms: u64, now: Instant, wall_now: SystemTime) -> Option<Instant> {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    now.checked_add(at.duration_since(wall_now).ok()?)
}

/// Milliseconds of `d`, saturated.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Bytes a `Put::text` of `s` takes.
pub(crate) fn text_len(s: &str) -> usize {
    8 + s.len()
}

/// A writer into a zeroizing buffer allocated once at its final size.
pub(crate) struct Put(Zeroizing<Vec<u8>>);

impl Put {
    /// A buffer of capacity `len`, starting with `magic`.
    pub(crate) fn new(magic: &[u8], len: usize) -> Self {
        let mut out = Zeroizing::new(Vec::with_capacity(magic.len() + len));
        out.extend_from_slice(magic);
        Self(out)
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn byte(&mut self, b: u8) {
        self.0.push(b);
    }
    pub(crate) fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    pub(crate) fn text(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    /// `v` as compact JSON text of `len` bytes (`json_len`), written straight into the buffer.
    pub(crate) fn json(&mut self, v: &serde_json::Value, len: usize) {
        self.u64(len as u64);
        let before = self.0.len();
        // Writing into a Vec cannot fail, and the capacity was reserved: no reallocation.
        let _ = serde_json::to_writer(&mut *self.0, v);
        debug_assert_eq!(self.0.len() - before, len);
    }
    /// An optional text: a 0 byte, or a 1 byte and the text.
    pub(crate) fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.byte(1);
                self.text(s);
            }
            None => self.byte(0),
        }
    }
    /// The buffer (its length must equal the capacity it was made with: checked in debug).
    pub(crate) fn finish(self) -> Zeroizing<Vec<u8>> {
        debug_assert_eq!(self.0.len(), self.0.capacity(), "handover size mismatch");
        self.0
    }
}

/// Bytes a `Put::opt_text` of `s` takes.
pub(crate) fn opt_text_len(s: Option<&str>) -> usize {
    1 + s.map_or(0, text_len)
}

/// A reader over a handover buffer; every read is `None` past its end.
pub(crate) struct Take<'a>(pub(crate) &'a [u8]);

impl<'a> Take<'a> {
    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    pub(crate) fn byte(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.bytes(8)?.try_into().ok()?))
    }
    pub(crate) fn digest(&mut self) -> Option<[u8; 32]> {
        self.bytes(32)?.try_into().ok()
    }
    pub(crate) fn text(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.u64()?).ok()?;
        std::str::from_utf8(self.bytes(n)?).ok()
    }
    pub(crate) fn opt_text(&mut self) -> Option<Option<&'a str>> {
        match self.byte()? {
            0 => Some(None),
            _ => Some(Some(self.text()?)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn put_and_take_round_trip_and_stop_at_the_end() {
        let len = 8 + 1 + text_len("abc") + opt_text_len(None) + opt_text_len(Some("é"));
        let mut p = Put::new(b"M\n", len);
        p.u64(7);
        p.byte(3);
        p.text("abc");
        p.opt_text(None);
        p.opt_text(Some("é"));
        let buf = p.finish();
        let mut t = Take(buf.strip_prefix(b"M\n").unwrap());
        assert_eq!(t.u64(), Some(7));
        assert_eq!(t.byte(), Some(3));
        assert_eq!(t.text(), Some("abc"));
        assert_eq!(t.opt_text(), Some(None));
        assert_eq!(t.opt_text(), Some(Some("é")));
        assert_eq!(t.byte(), None);
        // A length past the end is refused, not trusted.
        let mut t = Take(&[0, 0, 0, 0, 0, 0, 0, 9, b'x']);
        assert_eq!(t.text(), None);
    }

    #[test]
    fn times_travel_as_wall_clock() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let at = now + Duration::from_secs(30);
        let ms = wall_ms(at, now, wall);
        let back = instant_of(ms, now, wall).unwrap();
        assert!(back.max(at) - back.min(at) <= Duration::from_millis(1));
        assert_eq!(wall_ms(now - Duration::from_secs(1), now, wall), 0);
        assert_eq!(instant_of(1, now, wall), None, "1970 has passed");
    }
}
