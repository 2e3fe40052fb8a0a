//! The login-token cache: one OpenBao token per login identity (address, namespace, TLS
//! configuration, auth mount, role, and the JWT's issuer, subject and audience), reused by every
//! volume of that identity until shortly before its lease ends (anchors.md §11, plus the TTL
//! tracking upstream lacks).
//!
//! The JWT's claims are read without checking its signature, so they are never trusted alone: a
//! JWT may use its identity's token (and values shared under that identity) only once OpenBao
//! itself has accepted that very JWT in a login at this mount and role (the `accepted` set,
//! keyed by a digest of the JWT, kept until the JWT's `exp`). A forged JWT claiming someone
//! else's subject is thus refused by OpenBao before it is given anything. Two JWTs accepted for
//! the same (mount, role, issuer, subject, audience) are the same OpenBao identity: the role's
//! policies are the same, and the entity alias (named by the role's `user_claim`, `sub` for
//! service-account tokens) is the same, so identity policies are too. A renewable token is renewed (`auth/token/renew-self`) at two thirds of its lease
//! instead of logging in again; that keeps the leases it created (dynamic secrets) alive, since
//! OpenBao revokes a token's leases with the token.
//!
//! Each key has its own async slot, so concurrent fetches for the same key log in once, and a
//! caller that saw a token fail (403) replaces it only if nobody has already done so. Keys hold
//! digests, never the JWT; neither keys nor tokens ever reach `Debug` or a log.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::handover::{Put, Take, instant_of, millis, opt_text_len, text_len, wall_ms};
use super::shared::digest;
use crate::secret::SecretString;

/// Most keys kept; beyond this, expired and idle entries are dropped.
const MAX_ENTRIES: usize = 4096;
/// Smallest refresh margin before a token's lease ends.
const MIN_REFRESH_MARGIN: Duration = Duration::from_secs(5);
/// A renewal is not tried when the token ends sooner than this.
const RENEW_SLACK: Duration = Duration::from_millis(250);

/// Most accepted JWTs remembered.
const MAX_ACCEPTED: usize = 65536;

/// What a login token is cached under: where, how, and as whom (`subject`: a digest of the
/// JWT's issuer, subject and audience, or of the whole JWT when those cannot be read). A token
/// is only handed to a JWT OpenBao accepted for this key (see the module docs).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct LoginKey {
    pub(crate) address: String,
    pub(crate) namespace: Option<String>,
    pub(crate) tls: [u8; 32],
    pub(crate) mount: String,
    pub(crate) role: String,
    pub(crate) subject: [u8; 32],
}

impl LoginKey {
    /// A digest of the whole key (for shared-read keys).
    pub(crate) fn digest(&self) -> [u8; 32] {
        digest(&[
            b"login",
            self.address.as_bytes(),
            self.namespace.as_deref().unwrap_or("\0").as_bytes(),
            &self.tls,
            self.mount.as_bytes(),
            self.role.as_bytes(),
            &self.subject,
        ])
    }

    /// What marks `jwt` as accepted by OpenBao for this key.
    pub(crate) fn acceptance(&self, jwt: &SecretString) -> [u8; 32] {
        digest(&[&self.digest(), jwt.expose().as_bytes()])
    }
}

/// The identity claims of a JWT, read without verifying it (see the module docs).
pub(crate) struct JwtClaims {
    /// Digest of `iss`, `sub` and `aud`; of the whole JWT if it has no readable `sub`.
    pub(crate) subject: [u8; 32],
    /// `exp`, if present.
    pub(crate) expires: Option<SystemTime>,
}

/// Reads `iss`, `sub`, `aud` and `exp` from `jwt`'s payload.
pub(crate) fn jwt_claims(jwt: &SecretString) -> JwtClaims {
    let whole = || JwtClaims {
        subject: digest(&[b"jwt", jwt.expose().as_bytes()]),
        expires: None,
    };
    let Some(payload) = jwt.expose().split('.').nth(1) else {
        return whole();
    };
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')) else {
        return whole();
    };
    let Ok(claims) = serde_json::from_slice::<Value>(&bytes) else {
        return whole();
    };
    let text = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or("");
    let sub = text("sub");
    if sub.is_empty() {
        return whole();
    }
    let mut aud: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    aud.sort_unstable();
    aud.dedup();
    let aud = aud.join("\n");
    JwtClaims {
        subject: digest(&[
            b"claims",
            text("iss").as_bytes(),
            sub.as_bytes(),
            aud.as_bytes(),
        ]),
        expires: claims
            .get("exp")
            .and_then(Value::as_u64)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
    }
}

impl fmt::Debug for LoginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginKey(<redacted>)")
    }
}

/// A login token and when to renew or replace it.
#[derive(Clone)]
pub(crate) struct CachedToken {
    pub(crate) token: SecretString,
    /// The lease the token was issued with: the increment asked for at each renewal.
    ttl: Duration,
    /// Whether OpenBao allows renewing it (and the last renewal was not capped by a max TTL).
    renewable: bool,
    /// `None`: the lease never ends (lease_duration 0).
    expires_at: Option<Instant>,
    /// When to renew (renewable) or log in again (otherwise); `None` with `expires_at`.
    refresh_at: Option<Instant>,
}

impl CachedToken {
    /// A token with a lease of `lease` obtained at `now`. A renewable token is renewed at two
    /// thirds of its lease; any other is replaced when less than max(10 % of the lease, 5 s)
    /// remains.
    pub(crate) fn new(token: SecretString, lease: Duration, renewable: bool, now: Instant) -> Self {
        let mut t = Self {
            token,
            ttl: lease,
            renewable,
            expires_at: None,
            refresh_at: None,
        };
        t.schedule(lease, now);
        t
    }

    fn schedule(&mut self, lease: Duration, now: Instant) {
        if lease.is_zero() {
            self.expires_at = None;
            self.refresh_at = None;
            return;
        }
        self.expires_at = Some(now + lease);
        self.refresh_at = Some(if self.renewable {
            now + lease * 2 / 3
        } else {
            let margin = (self.ttl / 10).max(MIN_REFRESH_MARGIN);
            now + lease.saturating_sub(margin)
        });
    }

    /// Records a renewal at `now` that granted `lease`. A lease shorter than asked for means
    /// the token's max TTL is near: it is not renewed again but replaced by a login shortly
    /// before it ends.
    pub(crate) fn renewed(&mut self, lease: Duration, renewable: bool, now: Instant) {
        self.renewable = renewable && lease >= self.ttl;
        self.schedule(lease, now);
    }

    /// Whether the token may still be used at `now` without renewing it.
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        self.refresh_at.is_none_or(|t| now < t)
    }

    /// Whether renewing (rather than logging in again) makes sense at `now`.
    pub(crate) fn can_renew(&self, now: Instant) -> bool {
        self.renewable && self.expires_at.is_some_and(|e| now + RENEW_SLACK < e)
    }

    /// The increment to ask for at a renewal.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the token should next be renewed or replaced.
    pub(crate) fn refresh_at(&self) -> Option<Instant> {
        self.refresh_at
    }
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .field("renewable", &self.renewable)
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

/// One key's slot: held across a login so concurrent callers wait for it.
pub(crate) type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// The cache of login tokens.
#[derive(Default)]
pub(crate) struct TokenCache {
    slots: Mutex<HashMap<LoginKey, Slot>>,
    /// JWTs OpenBao accepted (by `LoginKey::acceptance`), until their `exp`.
    accepted: Mutex<HashMap<[u8; 32], Option<SystemTime>>>,
}

impl TokenCache {
    /// The slot for `key`, created if needed.
    pub(crate) fn slot(&self, key: &LoginKey) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = slots.get(key) {
            return Arc::clone(s);
        }
        if slots.len() >= MAX_ENTRIES {
            prune(&mut slots, Instant::now());
        }
        let slot = Slot::default();
        slots.insert(key.clone(), Arc::clone(&slot));
        slot
    }

    /// Whether OpenBao accepted the JWT behind `acceptance` and it has not expired.
    pub(crate) fn is_accepted(&self, acceptance: &[u8; 32]) -> bool {
        let now = SystemTime::now();
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(acceptance)
            .is_some_and(|exp| exp.is_none_or(|e| now < e))
    }

    /// Records that OpenBao accepted the JWT behind `acceptance` (valid until `expires`).
    pub(crate) fn accept(&self, acceptance: [u8; 32], expires: Option<SystemTime>) {
        let now = SystemTime::now();
        let mut accepted = self.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        if accepted.len() >= MAX_ACCEPTED {
            accepted.retain(|_, exp| exp.is_some_and(|e| now < e));
            if accepted.len() >= MAX_ACCEPTED {
                accepted.clear();
            }
        }
        accepted.insert(acceptance, expires);
    }

    /// Number of keys held (for tests and metrics).
    pub(crate) fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// What starts a login handover (`TokenCache::export`).
const HANDOVER_MAGIC: &[u8] = b"baofs-logins 1\n";

impl TokenCache {
    /// The cache for a successor process (a planned handoff or a crash): every token that is
    /// still valid and every acceptance that has not expired, in one zeroizing buffer of exactly
    /// the right size (tokens are secrets: the buffer only goes into `memfd_secret` memory).
    /// Times travel as wall-clock milliseconds. A slot busy with a login is left out (the
    /// successor logs in for it).
    pub(crate) fn export(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        let slots: Vec<(LoginKey, Slot)> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, s)| (k.clone(), Arc::clone(s)))
            .collect();
        let mut tokens = Vec::new();
        for (key, slot) in slots {
            let Ok(guard) = slot.try_lock() else {
                continue;
            };
            if let Some(t) = guard.as_ref()
                && t.expires_at.is_none_or(|e| now < e)
            {
                tokens.push((key, t.clone()));
            }
        }
        let accepted: Vec<([u8; 32], u64)> = self
            .accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, exp)| exp.is_none_or(|e| wall_now < e))
            .map(|(d, exp)| {
                let secs = exp.and_then(|e| e.duration_since(UNIX_EPOCH).ok());
                (*d, secs.map_or(0, |s| s.as_secs().max(1)))
            })
            .collect();
        let len = 8
            + tokens
                .iter()
                .map(|(k, t)| {
                    text_len(&k.address)
                        + opt_text_len(k.namespace.as_deref())
                        + 32
                        + text_len(&k.mount)
                        + text_len(&k.role)
                        + 32
                        + text_len(t.token.expose())
                        + 8
                        + 1
                        + 8
                        + 8
                })
                .sum::<usize>()
            + 8
            + accepted.len() * 40;
        let mut out = Put::new(HANDOVER_MAGIC, len);
        out.u64(tokens.len() as u64);
        for (k, t) in &tokens {
            out.text(&k.address);
            out.opt_text(k.namespace.as_deref());
            out.raw(&k.tls);
            out.text(&k.mount);
            out.text(&k.role);
            out.raw(&k.subject);
            out.text(t.token.expose());
            out.u64(millis(t.ttl));
            out.byte(u8::from(t.renewable));
            out.u64(t.expires_at.map_or(0, |e| wall_ms(e, now, wall_now)));
            out.u64(t.refresh_at.map_or(0, |r| wall_ms(r, now, wall_now)));
        }
        out.u64(accepted.len() as u64);
        for (d, exp) in &accepted {
            out.raw(d);
            out.u64(*exp);
        }
        out.finish()
    }

    /// Takes over a predecessor's `export`: its valid tokens and acceptances join this cache
    /// (an entry this cache already has is kept). Returns how many tokens were taken, or `None`
    /// when the buffer is not a handover (then nothing is taken).
    pub(crate) fn import(&self, bytes: &[u8]) -> Option<usize> {
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        let mut r = Take(bytes.strip_prefix(HANDOVER_MAGIC)?);
        let mut tokens = Vec::new();
        for _ in 0..r.u64()? {
            let address = r.text()?.to_owned();
            let namespace = r.opt_text()?.map(str::to_owned);
            let tls = r.digest()?;
            let mount = r.text()?.to_owned();
            let role = r.text()?.to_owned();
            let subject = r.digest()?;
            let token = SecretString::new(r.text()?.to_owned());
            let ttl = Duration::from_millis(r.u64()?);
            let renewable = r.byte()? != 0;
            let (expires, refresh) = (r.u64()?, r.u64()?);
            let expires_at = match expires {
                0 => None,
                ms => match instant_of(ms, now, wall_now) {
                    Some(at) => Some(at),
                    None => continue,
                },
            };
            let refresh_at = match refresh {
                0 => None,
                // A refresh time that has passed means "renew or log in at first use".
                ms => Some(instant_of(ms, now, wall_now).unwrap_or(now)),
            };
            let key = LoginKey {
                address,
                namespace,
                tls,
                mount,
                role,
                subject,
            };
            let cached = CachedToken {
                token,
                ttl,
                renewable,
                expires_at,
                refresh_at,
            };
            tokens.push((key, cached));
        }
        let mut accepted = Vec::new();
        for _ in 0..r.u64()? {
            let d = r.digest()?;
            let exp = match r.u64()? {
                0 => None,
                s => Some(UNIX_EPOCH + Duration::from_secs(s)),
            };
            accepted.push((d, exp));
        }
        let mut taken = 0;
        for (key, cached) in tokens {
            let slot = self.slot(&key);
            if let Ok(mut guard) = slot.try_lock()
                && guard.is_none()
            {
                *guard = Some(cached);
                taken += 1;
            }
        }
        for (d, exp) in accepted {
            if exp.is_none_or(|e| wall_now < e) {
                self.accept(d, exp);
            }
        }
        Some(taken)
    }
}

/// Drops entries that are empty or stale and not in use; if that is not enough, every entry
/// not in use (they only cost a login).
fn prune(slots: &mut HashMap<LoginKey, Slot>, now: Instant) {
    slots.retain(|_, slot| match slot.try_lock() {
        Ok(guard) => guard.as_ref().is_some_and(|t| t.is_fresh(now)),
        Err(_) => true,
    });
    if slots.len() >= MAX_ENTRIES {
        slots.retain(|_, slot| slot.try_lock().is_err());
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(jwt: &str) -> LoginKey {
        LoginKey {
            address: "http://127.0.0.1:8200/".into(),
            namespace: None,
            tls: [0; 32],
            mount: "kubernetes".into(),
            role: "app".into(),
            subject: jwt_claims(&SecretString::new(jwt.into())).subject,
        }
    }

    fn fake_jwt(claims: &Value) -> SecretString {
        SecretString::new(format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ))
    }

    #[test]
    fn identity_is_issuer_subject_audience_not_the_rest() {
        let sa = |pod: &str, aud: Value| {
            fake_jwt(&serde_json::json!({
                "iss": "https://k8s", "sub": "system:serviceaccount:ns:app", "aud": aud,
                "exp": 4_000_000_000u64, "kubernetes.io": {"pod": {"name": pod}}
            }))
        };
        let a = jwt_claims(&sa("p1", serde_json::json!(["x", "y"])));
        let b = jwt_claims(&sa("p2", serde_json::json!(["y", "x"])));
        let c = jwt_claims(&sa("p1", serde_json::json!("x")));
        assert_eq!(a.subject, b.subject, "same service account, other pod");
        assert_ne!(a.subject, c.subject, "other audience");
        assert_eq!(
            a.expires,
            Some(UNIX_EPOCH + Duration::from_secs(4_000_000_000))
        );
        let other = jwt_claims(&fake_jwt(&serde_json::json!({
            "iss": "https://k8s", "sub": "system:serviceaccount:ns:other", "aud": ["x", "y"]
        })));
        assert_ne!(a.subject, other.subject);
        // Unreadable claims: keyed by the whole JWT.
        let opaque1 = jwt_claims(&SecretString::new("not-a-jwt-1".into()));
        let opaque2 = jwt_claims(&SecretString::new("not-a-jwt-2".into()));
        assert_ne!(opaque1.subject, opaque2.subject);
    }

    #[test]
    fn acceptance_is_per_jwt_and_ends_at_exp() {
        let cache = TokenCache::default();
        let k = key("a");
        let (j1, j2) = (SecretString::new("a".into()), SecretString::new("b".into()));
        assert!(!cache.is_accepted(&k.acceptance(&j1)));
        cache.accept(k.acceptance(&j1), None);
        assert!(cache.is_accepted(&k.acceptance(&j1)));
        assert!(
            !cache.is_accepted(&k.acceptance(&j2)),
            "another JWT must log in itself"
        );
        cache.accept(
            k.acceptance(&j2),
            Some(SystemTime::now() - Duration::from_secs(1)),
        );
        assert!(!cache.is_accepted(&k.acceptance(&j2)), "expired");
    }

    #[test]
    fn refresh_margin_is_ten_percent_or_five_seconds() {
        let now = Instant::now();
        let t = SecretString::new("s.tok".into());
        let hour = CachedToken::new(t.clone(), Duration::from_secs(3600), false, now);
        assert!(hour.is_fresh(now + Duration::from_secs(3239)));
        assert!(!hour.is_fresh(now + Duration::from_secs(3240)));
        assert!(!hour.can_renew(now));
        let short = CachedToken::new(t.clone(), Duration::from_secs(20), false, now);
        assert!(short.is_fresh(now + Duration::from_secs(14)));
        assert!(!short.is_fresh(now + Duration::from_secs(15)));
        let tiny = CachedToken::new(t.clone(), Duration::from_secs(3), false, now);
        assert!(!tiny.is_fresh(now));
        let forever = CachedToken::new(t, Duration::ZERO, true, now);
        assert!(forever.is_fresh(now + Duration::from_secs(10 * 365 * 86400)));
    }

    #[test]
    fn renewable_tokens_renew_at_two_thirds_until_capped() {
        let now = Instant::now();
        let s = |n| now + Duration::from_secs(n);
        let mut t = CachedToken::new(
            SecretString::new("s.tok".into()),
            Duration::from_secs(30),
            true,
            now,
        );
        assert!(t.is_fresh(s(19)));
        assert!(!t.is_fresh(s(20)));
        assert!(t.can_renew(s(20)));
        assert!(!t.can_renew(s(30)), "an expired token is not renewed");
        t.renewed(Duration::from_secs(30), true, s(20));
        assert_eq!(t.refresh_at(), Some(s(40)));
        assert!(t.can_renew(s(40)));
        // Capped by the max TTL: no more renewals, replaced 5 s before the end.
        t.renewed(Duration::from_secs(12), true, s(40));
        assert!(!t.can_renew(s(45)));
        assert_eq!(t.refresh_at(), Some(s(47)));
        assert_eq!(t.ttl(), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn slots_are_per_key_including_the_jwt() {
        let cache = TokenCache::default();
        let a = cache.slot(&key("jwt-a"));
        let a2 = cache.slot(&key("jwt-a"));
        let b = cache.slot(&key("jwt-b"));
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(!Arc::ptr_eq(&a, &b));
        *a.lock().await = Some(CachedToken::new(
            SecretString::new("s.a".into()),
            Duration::from_secs(60),
            false,
            Instant::now(),
        ));
        assert!(b.lock().await.is_none());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn prune_drops_stale_and_idle_entries() {
        let mut slots = HashMap::new();
        let now = Instant::now();
        for i in 0..3 {
            let slot = Slot::default();
            if i == 0 {
                *slot.try_lock().expect("free") = Some(CachedToken::new(
                    SecretString::new("s.x".into()),
                    Duration::from_secs(600),
                    false,
                    now,
                ));
            }
            slots.insert(key(&format!("jwt-{i}")), slot);
        }
        prune(&mut slots, now);
        assert_eq!(slots.len(), 1);
    }

    #[test]
    fn debug_is_redacted() {
        let k = key("eyJhbGciOiJSUzI1NiJ9.secret-jwt");
        assert!(!format!("{k:?}").contains("secret-jwt"));
        let t = CachedToken::new(
            SecretString::new("s.secret-token".into()),
            Duration::from_secs(1),
            true,
            Instant::now(),
        );
        assert!(!format!("{t:?}").contains("secret-token"));
    }

    #[test]
    fn a_handover_carries_valid_tokens_and_acceptances_only() {
        let old = TokenCache::default();
        let now = Instant::now();
        let (a, b) = (key("a.b.c"), key("d.e.f"));
        *old.slot(&a).try_lock().unwrap() = Some(CachedToken::new(
            SecretString::new("s.alive".into()),
            Duration::from_secs(3600),
            true,
            now,
        ));
        // Issued long ago with a 1 s lease: expired, not handed over.
        let mut dead = CachedToken::new(
            SecretString::new("s.dead".into()),
            Duration::from_secs(1),
            false,
            now,
        );
        dead.expires_at = now.checked_sub(Duration::from_secs(1));
        *old.slot(&b).try_lock().unwrap() = Some(dead);
        let later = SystemTime::now() + Duration::from_secs(600);
        old.accept([1; 32], Some(later));
        old.accept([2; 32], None);
        old.accept([3; 32], Some(SystemTime::now() - Duration::from_secs(1)));

        let bytes = old.export();
        assert!(!format!("{old:?}").contains("s.alive"));
        let new = TokenCache::default();
        assert_eq!(new.import(&bytes), Some(1));
        let got = new.slot(&a).try_lock().unwrap().clone().unwrap();
        assert_eq!(got.token.expose(), "s.alive");
        assert_eq!(got.ttl(), Duration::from_secs(3600));
        assert!(got.is_fresh(Instant::now()) && got.can_renew(Instant::now()));
        let refresh = got.refresh_at().unwrap();
        let expected = now + Duration::from_secs(2400);
        assert!(refresh.max(expected) - refresh.min(expected) < Duration::from_secs(2));
        assert!(
            new.slot(&b).try_lock().unwrap().is_none(),
            "expired token taken"
        );
        assert!(new.is_accepted(&[1; 32]) && new.is_accepted(&[2; 32]));
        assert!(!new.is_accepted(&[3; 32]));
        // Not a handover: nothing taken.
        assert_eq!(TokenCache::default().import(b"garbage"), None);
        assert_eq!(
            TokenCache::default().import(&bytes[..bytes.len() - 3]),
            None
        );
    }
}
