//! Dynamic secrets: what one volume keeps between polls (pure state; the HTTP calls are in the
//! parent module).
//!
//! Upstream re-issues a dynamic secret at every mount and poll and never renews or revokes
//! anything (anchors.md §13: 5 RabbitMQ credentials in 10–12 minutes). baofs keeps one response
//! per (path, query, method, body) of a volume:
//!
//! - A response with a `lease_id` (e.g. `database/creds/<role>`, by GET or PUT) is kept while
//!   its lease is valid and renewed at two thirds of it (`sys/leases/renew`, asking for the
//!   original TTL again). When a renewal is refused, or grants less than asked (the max TTL is
//!   near), or the lease is not renewable, the secret is issued again at the same point of the
//!   lease, so the file changes (atomically, like a rotation) while the old credential still has
//!   a third of its lease to go. Superseded leases are left to expire (apps may still hold
//!   connections) but are revoked with the volume.
//! - A PUT/POST response without a lease (e.g. `pki/issue/<role>`) is issued once; when its data
//!   has an `expiration` (Unix seconds, as PKI certificates do) it is issued again at two thirds
//!   of its validity.
//! - A GET response without a lease (KV) is not kept: it is read at every poll.
//!
//! State is per volume, never shared between volumes, and every value is wiped when dropped.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use zeroize::Zeroizing;

use super::handover::{Put, Take, instant_of, millis, opt_text_len, text_len, wall_ms};
use super::kv;
use crate::secret::SecretString;
use crate::spc::ObjectMethod;

/// A deadline this close counts as reached (the poller may wake a little early).
pub(crate) const SLACK: Duration = Duration::from_millis(250);

/// One distinct request of a volume: objects with equal keys share one response and lease.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ReadKey {
    /// API path, without `v1/` and query.
    pub(crate) path: String,
    /// Query string, if any.
    pub(crate) query: Option<String>,
    /// The HTTP method.
    pub(crate) method: ObjectMethod,
    /// `secretArgs` as compact JSON (sorted keys), if any.
    pub(crate) body: Option<String>,
}

impl fmt::Debug for ReadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// A lease of a kept response.
pub(crate) struct Lease {
    /// The lease id (sensitive: it allows renewing and revoking).
    pub(crate) id: SecretString,
    /// The duration it was issued with: the increment asked for at each renewal.
    pub(crate) ttl: Duration,
    /// When OpenBao revokes it unless renewed.
    pub(crate) expires_at: Instant,
    /// Whether renewing is worth trying (renewable, and the last renewal was not capped).
    pub(crate) renewable: bool,
}

impl Lease {
    /// The lease id without its unique last segment (e.g. `database/creds/app`): safe to log.
    pub(crate) fn path(&self) -> &str {
        lease_path(self.id.expose())
    }
}

/// `a/b/c/<id>` → `a/b/c`.
pub(crate) fn lease_path(id: &str) -> &str {
    id.rsplit_once('/').map_or("", |(p, _)| p)
}

/// What to do with a kept response at a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Serve it as is.
    Reuse,
    /// Renew its lease, then serve it.
    Renew,
    /// Issue the secret again.
    Reissue,
}

/// A kept response: `{"data": …}` only, wiped when dropped.
pub(crate) struct Held {
    response: Value,
    lease: Option<Lease>,
    /// When to renew or re-issue; `None`: keep it for the volume's life.
    action_at: Option<Instant>,
}

impl Drop for Held {
    fn drop(&mut self) {
        kv::zeroize_value(self.response.take());
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("lease", &self.lease.as_ref().map(Lease::path))
            .field("action_at", &self.action_at)
            .finish_non_exhaustive()
    }
}

impl Held {
    /// Keeps `response` (issued at `now`, wall clock `wall`) if it is a dynamic secret: it has a
    /// lease, or it came from a write. Otherwise gives it back.
    pub(crate) fn from_response(
        mut response: Value,
        write: bool,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Held, Value> {
        let lease_id = response
            .get("lease_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if lease_id.is_none() && !write {
            return Err(response);
        }
        let ttl = Duration::from_secs(
            response
                .get("lease_duration")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        );
        let renewable = response
            .get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let data = response
            .get_mut("data")
            .map(Value::take)
            .unwrap_or(Value::Null);
        kv::zeroize_value(response);
        let lease = lease_id.map(|id| Lease {
            id: SecretString::new(id),
            ttl,
            expires_at: now + ttl,
            renewable,
        });
        let action_at = match &lease {
            Some(l) if !l.ttl.is_zero() => Some(now + l.ttl * 2 / 3),
            Some(_) => None,
            None => expiration(&data, wall).map(|validity| now + validity * 2 / 3),
        };
        let mut wrapped = serde_json::Map::new();
        wrapped.insert("data".to_owned(), data);
        Ok(Held {
            response: Value::Object(wrapped),
            lease,
            action_at,
        })
    }

    /// The kept response (`{"data": …}`), for extraction.
    pub(crate) fn response(&self) -> &Value {
        &self.response
    }

    /// Its lease, if any.
    pub(crate) fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// When it must be renewed or re-issued.
    pub(crate) fn action_at(&self) -> Option<Instant> {
        self.action_at
    }

    /// What to do at `now`.
    pub(crate) fn plan(&self, now: Instant) -> Plan {
        if self.lease.as_ref().is_some_and(|l| now >= l.expires_at) {
            return Plan::Reissue;
        }
        match self.action_at {
            Some(t) if now + SLACK >= t => {
                if self.lease.as_ref().is_some_and(|l| l.renewable) {
                    Plan::Renew
                } else {
                    Plan::Reissue
                }
            }
            _ => Plan::Reuse,
        }
    }

    /// Records a renewal at `now` that granted `granted`. Less than asked for means the max TTL
    /// is near: no more renewals; the secret is re-issued when a third of its original TTL is
    /// left (or right away if less remains).
    pub(crate) fn renewed(&mut self, granted: Duration, renewable: bool, now: Instant) {
        let Some(lease) = self.lease.as_mut() else {
            return;
        };
        lease.expires_at = now + granted;
        lease.renewable = renewable && granted >= lease.ttl;
        let action = lease.expires_at.checked_sub(lease.ttl / 3).unwrap_or(now);
        self.action_at = Some(action.max(now));
    }

    /// Turns a superseded response into what must still be revoked with the volume.
    fn into_retired(mut self, now: Instant) -> Option<Retired> {
        let lease = self.lease.take()?;
        (lease.expires_at > now).then_some(Retired {
            id: lease.id,
            expires_at: lease.expires_at,
        })
    }
}

/// The validity left of `data.expiration` (Unix seconds, as PKI certificates have).
fn expiration(data: &Value, wall: SystemTime) -> Option<Duration> {
    let at = data.get("expiration").and_then(Value::as_u64)?;
    let now = wall.duration_since(UNIX_EPOCH).ok()?.as_secs();
    at.checked_sub(now)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

/// A superseded lease that has not expired yet.
pub(crate) struct Retired {
    pub(crate) id: SecretString,
    expires_at: Instant,
}

/// Everything one volume keeps.
#[derive(Default)]
pub(crate) struct VolumeLeases {
    /// Kept responses by request.
    pub(crate) held: HashMap<ReadKey, Held>,
    /// Superseded leases still valid.
    retired: Vec<Retired>,
    /// Bumped at every change (a successor must be handed the new state).
    revision: u64,
}

impl fmt::Debug for VolumeLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolumeLeases")
            .field("held", &self.held.len())
            .field("retired", &self.retired.len())
            .finish()
    }
}

impl VolumeLeases {
    /// Replaces (or sets) the response of `key`; a replaced lease still valid is kept for
    /// revocation with the volume.
    pub(crate) fn put(&mut self, key: ReadKey, held: Held, now: Instant) {
        self.revision += 1;
        if let Some(old) = self.held.insert(key, held) {
            self.retire(old, now);
        }
    }

    /// Drops `key`'s response whose lease is known to be gone (renewal refused).
    pub(crate) fn forget(&mut self, key: &ReadKey) {
        if let Some(mut old) = self.held.remove(key) {
            self.revision += 1;
            old.lease = None;
        }
    }

    /// Records a renewal of `key`'s lease (see `Held::renewed`).
    pub(crate) fn renewed(
        &mut self,
        key: &ReadKey,
        granted: Duration,
        renewable: bool,
        now: Instant,
    ) {
        if let Some(h) = self.held.get_mut(key) {
            self.revision += 1;
            h.renewed(granted, renewable, now);
        }
    }

    /// Changes so far: differs after any change.
    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    /// Drops kept responses of requests the volume no longer makes, and expired retired leases.
    pub(crate) fn prune(&mut self, in_use: &[&ReadKey], now: Instant) {
        let stale: Vec<ReadKey> = self
            .held
            .keys()
            .filter(|k| !in_use.contains(k))
            .cloned()
            .collect();
        for k in stale {
            if let Some(old) = self.held.remove(&k) {
                self.revision += 1;
                self.retire(old, now);
            }
        }
        let before = self.retired.len();
        self.retired.retain(|r| r.expires_at > now);
        if self.retired.len() != before {
            self.revision += 1;
        }
    }

    fn retire(&mut self, old: Held, now: Instant) {
        if let Some(r) = old.into_retired(now) {
            self.retired.push(r);
        }
    }

    /// Empties the volume: the ids of every lease still valid, to revoke.
    pub(crate) fn drain(&mut self, now: Instant) -> Vec<SecretString> {
        self.revision += 1;
        std::mem::take(self)
            .into_live(now)
            .into_iter()
            .map(|r| r.id)
            .collect()
    }

    /// Every lease still valid, kept or superseded.
    fn into_live(mut self, now: Instant) -> Vec<Retired> {
        let mut live: Vec<Retired> = self
            .held
            .drain()
            .filter_map(|(_, h)| h.into_retired(now))
            .collect();
        live.extend(self.retired.drain(..).filter(|r| r.expires_at > now));
        live
    }

    /// Whether `id` is one of its leases, kept or superseded.
    fn has_lease(&self, id: &str) -> bool {
        self.held
            .values()
            .filter_map(Held::lease)
            .any(|l| l.id.expose() == id)
            || self.retired.iter().any(|r| r.id.expose() == id)
    }

    /// Whether nothing is kept.
    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty() && self.retired.is_empty()
    }
}

/// One volume's state, locked for the whole of a fetch or release of that volume.
pub(crate) type VolumeSlot = Arc<tokio::sync::Mutex<VolumeLeases>>;

/// Called when a volume's kept responses or leases changed.
pub(crate) type OnChange = Box<dyn Fn() + Send + Sync>;

/// The state of every volume, by volume id.
#[derive(Default)]
pub(crate) struct LeaseTable {
    volumes: Mutex<HashMap<String, Entry>>,
    on_change: std::sync::OnceLock<OnChange>,
}

/// A volume's slot, and whether it kept something when last released (read without waiting
/// for a fetch in progress).
#[derive(Default)]
struct Entry {
    slot: VolumeSlot,
    kept: bool,
}

impl fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseTable")
            .field("volumes", &self.len())
            .finish()
    }
}

impl LeaseTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.volumes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `volume`'s slot, created if needed.
    pub(crate) fn slot(&self, volume: &str) -> VolumeSlot {
        Arc::clone(&self.lock().entry(volume.to_owned()).or_default().slot)
    }

    /// Forgets `volume`'s slot if it keeps nothing and nobody else uses it (`slot` is the
    /// caller's reference, its guard already dropped).
    pub(crate) fn done(&self, volume: &str, slot: VolumeSlot) {
        let mut volumes = self.lock();
        // Two references: the table's and the caller's; a waiter holds a third.
        let unused = Arc::strong_count(&slot) <= 2;
        let empty = slot.try_lock().ok().map(|g| g.is_empty());
        if unused && empty == Some(true) {
            volumes.remove(volume);
        } else if let (Some(empty), Some(e)) = (empty, volumes.get_mut(volume)) {
            e.kept = !empty;
        }
    }

    /// Removes and returns `volume`'s slot.
    pub(crate) fn take(&self, volume: &str) -> Option<VolumeSlot> {
        self.lock().remove(volume).map(|e| e.slot)
    }

    /// Number of volumes with state.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Calls `f` after every change from now on (once set, it stays).
    pub(crate) fn set_on_change(&self, f: OnChange) {
        let _ = self.on_change.set(f);
    }

    /// Tells whoever asked (`set_on_change`) that a volume's state changed.
    pub(crate) fn changed(&self) {
        if let Some(f) = self.on_change.get() {
            f();
        }
    }

    /// Every volume's kept responses and leases, for a successor process (a planned handoff
    /// or a crash), so it goes on serving and renewing them instead of issuing every dynamic
    /// secret again (new credentials in every pod, the old ones left to their TTL). Responses
    /// and lease ids are secrets: the buffer is built at its exact size and only ever goes
    /// into `memfd_secret` memory. A volume busy with a fetch is left out (a successor would
    /// issue its secrets again), and another export is asked for (`changed`) so that it is
    /// not left out for long; an expired lease is left out.
    pub(crate) fn export(&self) -> Zeroizing<Vec<u8>> {
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        let slots: Vec<(String, VolumeSlot, bool)> = self
            .lock()
            .iter()
            .map(|(v, e)| (v.clone(), Arc::clone(&e.slot), e.kept))
            .collect();
        let mut busy = false;
        let guards: Vec<(String, tokio::sync::MutexGuard<'_, VolumeLeases>)> = slots
            .iter()
            .filter_map(|(v, s, kept)| match s.try_lock() {
                Ok(g) => Some((v.clone(), g)),
                Err(_) => {
                    // Busy with its first fetch, or keeping nothing: nothing to miss.
                    busy |= *kept;
                    None
                }
            })
            .filter(|(_, g)| !g.is_empty())
            .collect();
        if busy {
            self.changed();
        }
        let live = |l: &Lease| l.expires_at > now;
        let held_len = |k: &ReadKey, h: &Held| {
            text_len(&k.path)
                + opt_text_len(k.query.as_deref())
                + 1
                + opt_text_len(k.body.as_deref())
                + 8
                + json_len(&h.response)
                + 1
                + h.lease
                    .as_ref()
                    .map_or(0, |l| text_len(l.id.expose()) + 8 + 8 + 1)
                + 1
                + h.action_at.map_or(0, |_| 8)
        };
        let len = 8 + guards
            .iter()
            .map(|(v, g)| {
                text_len(v)
                    + 8
                    + g.held
                        .iter()
                        .filter(|(_, h)| h.lease.as_ref().is_none_or(live))
                        .map(|(k, h)| held_len(k, h))
                        .sum::<usize>()
                    + 8
                    + g.retired
                        .iter()
                        .filter(|r| r.expires_at > now)
                        .map(|r| text_len(r.id.expose()) + 8)
                        .sum::<usize>()
            })
            .sum::<usize>();
        let mut out = Put::new(HANDOVER_MAGIC, len);
        out.u64(guards.len() as u64);
        for (volume, g) in &guards {
            out.text(volume);
            let held: Vec<(&ReadKey, &Held)> = g
                .held
                .iter()
                .filter(|(_, h)| h.lease.as_ref().is_none_or(live))
                .collect();
            out.u64(held.len() as u64);
            for (k, h) in held {
                out.text(&k.path);
                out.opt_text(k.query.as_deref());
                out.byte(method_byte(k.method));
                out.opt_text(k.body.as_deref());
                out.json(&h.response, json_len(&h.response));
                match &h.lease {
                    Some(l) => {
                        out.byte(1);
                        out.text(l.id.expose());
                        out.u64(millis(l.ttl));
                        out.u64(wall_ms(l.expires_at, now, wall_now));
                        out.byte(u8::from(l.renewable));
                    }
                    None => out.byte(0),
                }
                match h.action_at {
                    Some(at) => {
                        out.byte(1);
                        out.u64(wall_ms(at, now, wall_now));
                    }
                    None => out.byte(0),
                }
            }
            let retired: Vec<&Retired> = g.retired.iter().filter(|r| r.expires_at > now).collect();
            out.u64(retired.len() as u64);
            for r in retired {
                out.text(r.id.expose());
                out.u64(wall_ms(r.expires_at, now, wall_now));
            }
        }
        drop(guards);
        out.finish()
    }

    /// Takes over a predecessor's `export`: each volume in it gets the predecessor's state.
    /// What this process already kept for such a volume (it fetched before the predecessor's
    /// final word) is replaced, its leases still valid kept for revocation with the volume.
    /// Returns how many volumes were taken, or `None` when `bytes` is not such an export (then
    /// nothing is taken).
    pub(crate) fn import(&self, bytes: &[u8]) -> Option<usize> {
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        let mut r = Take(bytes.strip_prefix(HANDOVER_MAGIC)?);
        let mut volumes = Vec::new();
        for _ in 0..r.u64()? {
            let volume = r.text()?.to_owned();
            let mut state = VolumeLeases::default();
            for _ in 0..r.u64()? {
                let key = ReadKey {
                    path: r.text()?.to_owned(),
                    query: r.opt_text()?.map(str::to_owned),
                    method: method_of(r.byte()?)?,
                    body: r.opt_text()?.map(str::to_owned),
                };
                // Parsed last, once nothing can fail before it is held (`Held` wipes it).
                let json = r.text()?;
                let lease = match r.byte()? {
                    0 => None,
                    _ => {
                        let id = SecretString::new(r.text()?.to_owned());
                        let ttl = Duration::from_millis(r.u64()?);
                        let expires = r.u64()?;
                        let renewable = r.byte()? != 0;
                        Some((id, ttl, expires, renewable))
                    }
                };
                let action_at = match r.byte()? {
                    0 => None,
                    // A time that has passed means "due now".
                    _ => Some(instant_of(r.u64()?, now, wall_now).unwrap_or(now)),
                };
                let lease = match lease {
                    Some((id, ttl, expires, renewable)) => {
                        // Expired on the way: issued again at first use.
                        let Some(expires_at) = instant_of(expires, now, wall_now) else {
                            continue;
                        };
                        Some(Lease {
                            id,
                            ttl,
                            expires_at,
                            renewable,
                        })
                    }
                    None => None,
                };
                let response: Value = serde_json::from_str(json).ok()?;
                state.held.insert(
                    key,
                    Held {
                        response,
                        lease,
                        action_at,
                    },
                );
            }
            for _ in 0..r.u64()? {
                let id = SecretString::new(r.text()?.to_owned());
                if let Some(expires_at) = instant_of(r.u64()?, now, wall_now) {
                    state.retired.push(Retired { id, expires_at });
                }
            }
            volumes.push((volume, state));
        }
        let mut taken = 0;
        for (volume, mut state) in volumes {
            let slot = self.slot(&volume);
            let Ok(mut guard) = slot.try_lock() else {
                // Busy: this process is fetching it; what it keeps stands.
                continue;
            };
            taken += 1;
            let mine = std::mem::take(&mut *guard);
            let revision = mine.revision + 1;
            let extra: Vec<Retired> = mine
                .into_live(now)
                .into_iter()
                .filter(|r| !state.has_lease(r.id.expose()))
                .collect();
            state.retired.extend(extra);
            state.revision = revision;
            *guard = state;
            drop(guard);
            if let Some(e) = self.lock().get_mut(&volume) {
                e.kept = true;
            }
        }
        Some(taken)
    }
}

/// What starts a lease handover (`LeaseTable::export`).
const HANDOVER_MAGIC: &[u8] = b"baofs-leases 1\n";

fn method_byte(m: ObjectMethod) -> u8 {
    match m {
        ObjectMethod::Get => 0,
        ObjectMethod::Put => 1,
        ObjectMethod::Post => 2,
    }
}

fn method_of(b: u8) -> Option<ObjectMethod> {
    match b {
        0 => Some(ObjectMethod::Get),
        1 => Some(ObjectMethod::Put),
        2 => Some(ObjectMethod::Post),
        _ => None,
    }
}

/// Bytes of `v` as compact JSON.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a `Value` to a sink that cannot fail does not fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn key(path: &str) -> ReadKey {
        ReadKey {
            path: path.into(),
            query: None,
            method: ObjectMethod::Get,
            body: None,
        }
    }

    fn db_response(ttl: u64, renewable: bool) -> Value {
        json!({"request_id": "r", "lease_id": "database/creds/app/AbC", "renewable": renewable,
               "lease_duration": ttl, "data": {"username": "v-app", "password": "pw"}})
    }

    #[test]
    fn kv_reads_are_not_kept_writes_and_leases_are() {
        let now = Instant::now();
        let kv = json!({"lease_id": "", "lease_duration": 2_764_800, "data": {"a": "1"}});
        assert!(Held::from_response(kv, false, now, SystemTime::now()).is_err());
        let h = Held::from_response(db_response(30, true), false, now, SystemTime::now())
            .expect("leased GET is kept");
        assert_eq!(
            h.response(),
            &json!({"data": {"username": "v-app", "password": "pw"}})
        );
        assert_eq!(h.lease().map(Lease::path), Some("database/creds/app"));
        assert_eq!(h.action_at(), Some(now + secs(20)));
        let pki = json!({"lease_id": "", "data": {"certificate": "C", "expiration": 0}});
        let h = Held::from_response(pki, true, now, SystemTime::now()).expect("write is kept");
        assert!(h.lease().is_none());
        assert_eq!(h.action_at(), None, "no (future) expiration: kept for good");
        assert_eq!(h.plan(now + secs(86_400 * 365)), Plan::Reuse);
    }

    #[test]
    fn pki_certificates_are_reissued_at_two_thirds_of_their_validity() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + secs(1_000_000);
        let pki = json!({"data": {"certificate": "C", "expiration": 1_000_000 + 3600}});
        let h = Held::from_response(pki, true, now, wall).expect("kept");
        assert_eq!(h.action_at(), Some(now + secs(2400)));
        assert_eq!(h.plan(now + secs(2399)), Plan::Reuse);
        assert_eq!(h.plan(now + secs(2400)), Plan::Reissue);
    }

    #[test]
    fn renew_at_two_thirds_then_reissue_when_capped() {
        let now = Instant::now();
        let at = |n| now + secs(n);
        let mut h = Held::from_response(db_response(30, true), false, now, SystemTime::now())
            .expect("kept");
        assert_eq!(h.plan(at(19)), Plan::Reuse);
        assert_eq!(h.plan(at(20)), Plan::Renew);
        h.renewed(secs(30), true, at(20));
        assert_eq!(h.action_at(), Some(at(40)));
        assert_eq!(h.plan(at(39)), Plan::Reuse);
        assert_eq!(h.plan(at(40)), Plan::Renew);
        // The max TTL caps the renewal at 12 s: re-issue when 10 s (a third of 30) remain.
        h.renewed(secs(12), true, at(40));
        assert_eq!(h.action_at(), Some(at(42)));
        assert_eq!(h.plan(at(42)), Plan::Reissue);
        // Capped below a third: re-issue right away.
        let mut h2 = Held::from_response(db_response(30, true), false, now, SystemTime::now())
            .expect("kept");
        h2.renewed(secs(4), true, at(20));
        assert_eq!(h2.action_at(), Some(at(20)));
        assert_eq!(h2.plan(at(20)), Plan::Reissue);
        // Expired (e.g. OpenBao was down past the end of the lease): re-issue.
        let h3 = Held::from_response(db_response(30, true), false, now, SystemTime::now())
            .expect("kept");
        assert_eq!(h3.plan(at(30)), Plan::Reissue);
        // Not renewable: re-issued at two thirds.
        let h4 = Held::from_response(db_response(30, false), false, now, SystemTime::now())
            .expect("kept");
        assert_eq!(h4.plan(at(20)), Plan::Reissue);
    }

    #[test]
    fn superseded_leases_are_revoked_with_the_volume_until_they_expire() {
        let now = Instant::now();
        let mut v = VolumeLeases::default();
        let k = key("database/creds/app");
        let held = |at: Instant| {
            Held::from_response(db_response(30, true), false, at, SystemTime::now()).expect("kept")
        };
        v.put(k.clone(), held(now), now);
        v.put(k.clone(), held(now + secs(20)), now + secs(20));
        assert_eq!(v.retired.len(), 1, "the old lease has 10 s left");
        v.prune(&[&k], now + secs(31));
        assert!(v.retired.is_empty(), "expired: nothing to revoke");
        v.put(k.clone(), held(now + secs(40)), now + secs(40));
        assert_eq!(v.drain(now + secs(41)).len(), 2);
        assert!(v.is_empty());
        v.put(k.clone(), held(now), now);
        v.forget(&k);
        assert!(v.is_empty(), "a refused lease is not revoked");
        v.put(k.clone(), held(now), now);
        v.prune(&[], now);
        assert!(v.held.is_empty() && v.retired.len() == 1);
    }

    #[tokio::test]
    async fn slots_are_per_volume_and_dropped_when_empty() {
        let t = LeaseTable::default();
        let a = t.slot("vol-a");
        let b = t.slot("vol-b");
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&a, &t.slot("vol-a")));
        t.done("vol-b", b);
        assert_eq!(t.len(), 1);
        a.lock().await.put(
            key("p"),
            Held::from_response(
                db_response(30, true),
                false,
                Instant::now(),
                SystemTime::now(),
            )
            .expect("kept"),
            Instant::now(),
        );
        t.done("vol-a", a);
        assert_eq!(t.len(), 1, "kept: it holds a lease");
        assert!(t.take("vol-a").is_some());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn debug_shows_no_lease_id_or_value() {
        let h = Held::from_response(
            db_response(30, true),
            false,
            Instant::now(),
            SystemTime::now(),
        )
        .expect("kept");
        let d = format!("{h:?}");
        assert!(!d.contains("AbC") && !d.contains("pw"), "{d}");
    }

    fn response_of(h: &Held) -> &Value {
        h.response()
    }

    #[tokio::test]
    async fn a_handover_carries_responses_leases_and_retired_leases() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let old = LeaseTable::default();
        let db = key("database/creds/app");
        let pki = ReadKey {
            path: "pki/issue/web".into(),
            query: Some("x=1".into()),
            method: ObjectMethod::Post,
            body: Some(r#"{"common_name":"a"}"#.into()),
        };
        {
            let slot = old.slot("vol-a");
            let mut v = slot.lock().await;
            let first = Held::from_response(db_response(30, true), false, now, wall).expect("kept");
            v.put(db.clone(), first, now);
            let mut second = db_response(30, true);
            second["lease_id"] = json!("database/creds/app/NEW");
            second["data"]["password"] = json!("pw2");
            let second = Held::from_response(second, false, now, wall).expect("kept");
            v.put(db.clone(), second, now);
            let cert = json!({"data": {"certificate": "C\n\u{e9}", "serial_number": "01"}});
            v.put(
                pki.clone(),
                Held::from_response(cert, true, now, wall).expect("kept"),
                now,
            );
        }
        old.slot("vol-empty");
        let bytes = old.export();

        let new = LeaseTable::default();
        assert_eq!(
            new.import(&bytes),
            Some(1),
            "the empty volume is not handed over"
        );
        let slot = new.slot("vol-a");
        let v = slot.lock().await;
        let h = v.held.get(&db).expect("the kept lease");
        assert_eq!(response_of(h)["data"]["password"], "pw2");
        let lease = h.lease().expect("its lease");
        assert_eq!(lease.id.expose(), "database/creds/app/NEW");
        assert_eq!(lease.ttl, secs(30));
        assert!(lease.renewable);
        let close = |a: Instant, b: Instant| a.max(b) - a.min(b) <= Duration::from_millis(50);
        assert!(close(lease.expires_at, now + secs(30)));
        assert!(close(h.action_at().expect("renew at"), now + secs(20)));
        assert_eq!(h.plan(Instant::now()), Plan::Reuse, "not issued again");
        let c = v.held.get(&pki).expect("the certificate, by its whole key");
        assert_eq!(response_of(c)["data"]["certificate"], "C\n\u{e9}");
        assert!(c.lease().is_none() && c.action_at().is_none());
        assert_eq!(
            v.retired.len(),
            1,
            "the superseded lease is still revoked with the volume"
        );
        assert_eq!(v.retired[0].id.expose(), "database/creds/app/AbC");

        // Not a handover, or cut short: nothing is taken.
        assert_eq!(LeaseTable::default().import(b"baofs-logins 1\n"), None);
        let cut = LeaseTable::default();
        assert_eq!(cut.import(&bytes[..bytes.len() - 5]), None);
        assert_eq!(cut.len(), 0);
    }

    #[tokio::test]
    async fn a_final_handover_replaces_what_the_successor_issued_meanwhile() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let db = key("database/creds/app");
        let owner = LeaseTable::default();
        owner.slot("vol").lock().await.put(
            db.clone(),
            Held::from_response(db_response(30, true), false, now, wall).expect("kept"),
            now,
        );
        let successor = LeaseTable::default();
        let mut mine = db_response(30, true);
        mine["lease_id"] = json!("database/creds/app/MINE");
        successor.slot("vol").lock().await.put(
            db.clone(),
            Held::from_response(mine, false, now, wall).expect("kept"),
            now,
        );
        assert_eq!(successor.import(&owner.export()), Some(1));
        let slot = successor.slot("vol");
        let mut v = slot.lock().await;
        let held = v.held.get(&db).and_then(Held::lease).expect("kept");
        assert_eq!(
            held.id.expose(),
            "database/creds/app/AbC",
            "the owner's lease is served"
        );
        let ids: Vec<String> = v
            .drain(Instant::now())
            .iter()
            .map(|i| i.expose().to_owned())
            .collect();
        assert_eq!(
            ids,
            ["database/creds/app/AbC", "database/creds/app/MINE"],
            "the successor's own lease is revoked with the volume, not leaked"
        );
    }

    #[tokio::test]
    async fn expired_leases_are_not_handed_over_and_changes_are_announced() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let t = LeaseTable::default();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        t.set_on_change(Box::new(move || {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let past = now.checked_sub(secs(40)).expect("an instant 40 s ago");
        {
            let slot = t.slot("vol");
            let mut v = slot.lock().await;
            let before = v.revision();
            v.put(
                key("database/creds/app"),
                Held::from_response(db_response(30, true), false, past, wall).expect("kept"),
                past,
            );
            assert_ne!(v.revision(), before);
            let r = v.revision();
            v.renewed(&key("database/creds/app"), secs(30), true, now);
            assert_ne!(v.revision(), r, "a renewal is a change");
            let r = v.revision();
            v.renewed(&key("not-kept"), secs(30), true, now);
            assert_eq!(v.revision(), r);
            // Back to expired for the export.
            v.held
                .get_mut(&key("database/creds/app"))
                .and_then(|h| h.lease.as_mut())
                .expect("lease")
                .expires_at = past + secs(30);
        }
        // As at the end of a fetch: the table learns the volume keeps something.
        t.done("vol", t.slot("vol"));
        t.changed();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        let fresh = LeaseTable::default();
        assert_eq!(fresh.import(&t.export()), Some(1));
        assert!(
            fresh.slot("vol").lock().await.held.is_empty(),
            "an expired lease is issued again, not renewed"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A volume that keeps something, busy with a fetch, is left out, and another export is
        // asked for; one that keeps nothing is not worth one.
        let idle = t.slot("kv-only");
        let _fetching = idle.lock().await;
        assert_eq!(LeaseTable::default().import(&t.export()), Some(1));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        let slot = t.slot("vol");
        let busy = slot.lock().await;
        let bytes = t.export();
        assert_eq!(LeaseTable::default().import(&bytes), Some(0));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        drop(busy);
        assert_eq!(LeaseTable::default().import(&t.export()), Some(1));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
