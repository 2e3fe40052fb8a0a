//! The OpenBao provider: logs in, reads secrets over HTTP and extracts each object's value.
//!
//! This is the only module that talks HTTP (`reqwest` stays inside `provider/openbao*`). It
//! follows the OpenBao CSI provider's behaviour (anchors.md §10–§14) and fixes its known flaws:
//! login tokens are cached for their lease and renewed (not re-requested every poll), a whole
//! secret is written without the response envelope so its content is stable, dynamic secrets
//! are issued once per volume, renewed and revoked (not re-issued every poll), transient
//! failures are retried with backoff, and every error names the SPC, the object and the
//! OpenBao path (and, for TLS, which certificate check failed).
//!
//! Static reads are shared across volumes of the same identity (`shared`): one request per
//! distinct secret per poll, single flight; dynamic secrets stay per volume.
//!
//! Submodules: `kv` (pure extraction from a parsed response), `auth` (the login-token cache),
//! `shared` (reads shared across volumes),
//! `lease` (what a volume keeps of its dynamic secrets), `tls` (clients per TLS configuration,
//! certificate errors), `version` (object versions). Secret values, tokens and lease ids never
//! reach an error, a log line or `Debug`.

mod auth;
mod handover;
pub mod kv;
mod lease;
mod shared;
mod tls;
pub mod version;

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::Value;

use crate::provider::{BoxFuture, FetchedObject, Provider};
use crate::secret::SecretString;
use crate::spc::{Encoding, ObjectMethod, ObjectSpec};
use crate::volume::{Credentials, VolumeSpec};

use auth::{CachedToken, LoginKey, TokenCache};
use kv::{ExtractError, ZeroizingBuf};
use lease::{Held, LeaseTable, Plan, ReadKey, VolumeLeases};
use shared::{Outcome, ShareKey, Shared, SharedReads, SharedValue};
use std::sync::Arc;
use tls::TlsClients;
use version::VersionKey;

/// Default timeout of one HTTP request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time during which transient failures are retried.
pub const DEFAULT_RETRY_DEADLINE: Duration = Duration::from_secs(30);
/// Default largest object value.
pub const DEFAULT_MAX_OBJECT_SIZE: usize = 1 << 20;
/// The header carrying the OpenBao token.
const TOKEN_HEADER: &str = "X-Vault-Token";
/// The header carrying the OpenBao namespace.
const NAMESPACE_HEADER: &str = "X-Vault-Namespace";
/// Where leases are renewed.
const RENEW_PATH: &str = "sys/leases/renew";
/// Where leases are revoked.
const REVOKE_PATH: &str = "sys/leases/revoke";
/// First retry delay; doubled after each attempt up to `MAX_BACKOFF`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest OpenBao error text kept in an error message.
const MAX_ERROR_TEXT: usize = 512;
/// Redirects followed (same origin only, so the token never goes elsewhere).
const MAX_REDIRECTS: usize = 3;

/// Settings of the OpenBao provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBaoConfig {
    /// Address used when an SPC has no `<P>Address` (from `BAO_ADDR`/`VAULT_ADDR`, filled by
    /// the caller, e.g. with [`OpenBaoConfig::env_address`]).
    pub default_address: Option<String>,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// How long transient failures (5xx, 429, connection errors, timeouts) are retried within
    /// one fetch.
    pub retry_deadline: Duration,
    /// Largest value of one object, in bytes (after decoding).
    pub max_object_size: usize,
    /// How long a static response is shared with other volumes of the same identity after it
    /// was fetched (`baofs csi`: half the poll interval). Zero: only requests in flight are
    /// shared (concurrent fetches of one key still make one request).
    pub share_window: Duration,
}

impl Default for OpenBaoConfig {
    fn default() -> Self {
        Self {
            default_address: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_deadline: DEFAULT_RETRY_DEADLINE,
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
            share_window: Duration::ZERO,
        }
    }
}

impl OpenBaoConfig {
    /// `BAO_ADDR`, else `VAULT_ADDR` (non-empty), as the OpenBao client reads them.
    pub fn env_address() -> Option<String> {
        ["BAO_ADDR", "VAULT_ADDR"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Largest response body accepted: room for several objects plus JSON escaping.
    fn max_body_size(&self) -> usize {
        self.max_object_size.saturating_mul(16).max(64 * 1024)
    }
}

/// What went wrong talking to OpenBao. Contains no secret: OpenBao's `errors` texts, statuses
/// and transport errors only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// OpenBao answered with an error status; `errors` is its `errors` array, joined.
    Status {
        /// The HTTP status.
        status: u16,
        /// OpenBao's error text (may be empty).
        errors: String,
    },
    /// The server could not be reached (connection refused, DNS failure, ...).
    Unreachable(String),
    /// No response within the request timeout.
    Timeout(Duration),
    /// TLS failed (certificate, handshake, plain HTTP on an https address, ...).
    Tls(String),
    /// The connection failed after it was established.
    Connection(String),
    /// The response could not be used (not JSON, too large, no token in a login reply, ...).
    InvalidResponse(String),
    /// The token cannot be sent in an HTTP header.
    InvalidToken,
    /// Transient failures went on past the retry deadline.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        last: Box<Cause>,
    },
}

impl Cause {
    /// The HTTP status OpenBao answered with, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Cause::Status { status, .. } => Some(*status),
            Cause::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    /// Whether trying again may succeed (5xx, 429, connection problems, timeouts).
    pub fn is_retryable(&self) -> bool {
        match self {
            Cause::Status { status, .. } => *status >= 500 || *status == 429,
            Cause::Unreachable(_) | Cause::Timeout(_) | Cause::Connection(_) => true,
            Cause::GaveUp { last, .. } => last.is_retryable(),
            Cause::Tls(_) | Cause::InvalidResponse(_) | Cause::InvalidToken => false,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Status { status, errors } => {
                write!(f, "HTTP {status}")?;
                let reason = StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason());
                if let Some(r) = reason {
                    write!(f, " {r}")?;
                }
                if !errors.is_empty() {
                    write!(f, ": {errors}")?;
                }
                Ok(())
            }
            Cause::Unreachable(d) => write!(f, "OpenBao is unreachable: {d}"),
            Cause::Timeout(t) => write!(f, "no response within {}s", t.as_secs_f64()),
            Cause::Tls(d) => write!(f, "TLS error: {d}"),
            Cause::Connection(d) => write!(f, "connection error: {d}"),
            Cause::InvalidResponse(d) => write!(f, "invalid response: {d}"),
            Cause::InvalidToken => f.write_str("the token is not a valid HTTP header value"),
            Cause::GaveUp {
                attempts,
                elapsed,
                last,
            } => write!(
                f,
                "{last} (gave up after {attempts} attempt{} in {:.1}s)",
                if *attempts == 1 { "" } else { "s" },
                elapsed.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for Cause {}

/// Why a fetch failed. Every variant names the SPC; object errors name the object and the
/// OpenBao path (never its query string, never a value or a token).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Neither the SPC nor the environment gives an address.
    #[error(
        "missing 'vaultAddress' (or baoAddress/openbaoAddress) in SecretProviderClass {spc} and BAO_ADDR is not set"
    )]
    MissingAddress {
        /// The SPC.
        spc: String,
    },
    /// The address is not an http(s) URL usable as a base.
    #[error("SecretProviderClass '{spc}': invalid OpenBao address{}: {reason}", address.as_ref().map(|a| format!(" '{a}'")).unwrap_or_default())]
    InvalidAddress {
        /// The SPC.
        spc: String,
        /// The address, unless it may contain credentials.
        address: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the OpenBao HTTP client: {0}")]
    Client(String),
    /// A TLS parameter cannot be used (file missing or unreadable, no certificate or key in it).
    #[error(
        "SecretProviderClass '{spc}': TLS parameter '<prefix>{parameter}'{}: {reason}",
        if path.is_empty() { String::new() } else { format!(" ('{path}')") }
    )]
    TlsConfig {
        /// The SPC.
        spc: String,
        /// The parameter, without its prefix (e.g. `CACertPath`).
        parameter: &'static str,
        /// The path it names (empty if none).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Logging in failed.
    #[error(
        "SecretProviderClass '{spc}': login to OpenBao at {address} (auth mount '{mount}', role '{role}') failed: {cause}"
    )]
    Login {
        /// The SPC.
        spc: String,
        /// The OpenBao address.
        address: String,
        /// The auth mount.
        mount: String,
        /// The role.
        role: String,
        /// What happened.
        cause: Box<Cause>,
    },
    /// A request for an object (reading it, issuing it, renewing or revoking its lease) failed.
    #[error(
        "SecretProviderClass '{spc}': object '{object}': {operation} OpenBao path '{path}' at {address} failed: {cause}"
    )]
    Read {
        /// The SPC.
        spc: String,
        /// The (first) object reading this path.
        object: String,
        /// What the request did: `reading`, `issuing a secret at`, `renewing a lease at`,
        /// `revoking a lease at`.
        operation: &'static str,
        /// The OpenBao API path, without query.
        path: String,
        /// The OpenBao address.
        address: String,
        /// What happened.
        cause: Box<Cause>,
    },
    /// `secretKey` is not in the secret.
    #[error("key '{key}' does not exist at secret path '{path}' (object '{object}', SPC '{spc}')")]
    KeyNotFound {
        /// The SPC.
        spc: String,
        /// The object.
        object: String,
        /// The OpenBao API path.
        path: String,
        /// The missing key.
        key: String,
    },
    /// The KV v2 version read is deleted or destroyed.
    #[error(
        "SecretProviderClass '{spc}': object '{object}': the secret version at '{path}' is deleted or destroyed"
    )]
    DeletedVersion {
        /// The SPC.
        spc: String,
        /// The object.
        object: String,
        /// The OpenBao API path.
        path: String,
    },
    /// The response had no data.
    #[error(
        "SecretProviderClass '{spc}': object '{object}': OpenBao returned no data for '{path}'"
    )]
    NoData {
        /// The SPC.
        spc: String,
        /// The object.
        object: String,
        /// The OpenBao API path.
        path: String,
    },
    /// The value is not valid in the object's encoding.
    #[error(
        "SecretProviderClass '{spc}': object '{object}': the value at '{path}' cannot be decoded as {encoding} (the object's encoding)"
    )]
    Decode {
        /// The SPC.
        spc: String,
        /// The object.
        object: String,
        /// The OpenBao API path.
        path: String,
        /// The declared encoding.
        encoding: Encoding,
    },
    /// The value is too large.
    #[error(
        "SecretProviderClass '{spc}': object '{object}': the value at '{path}' is {size} bytes, over the limit of {limit} bytes"
    )]
    TooLarge {
        /// The SPC.
        spc: String,
        /// The object.
        object: String,
        /// The OpenBao API path.
        path: String,
        /// The value's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl ProviderError {
    /// The same failure, as seen by another volume sharing the request: its SPC and object.
    fn reattributed(&self, spc_name: &str, object_name: &str) -> ProviderError {
        let mut e = self.clone();
        match &mut e {
            ProviderError::Read { spc, object, .. }
            | ProviderError::KeyNotFound { spc, object, .. }
            | ProviderError::DeletedVersion { spc, object, .. }
            | ProviderError::NoData { spc, object, .. }
            | ProviderError::Decode { spc, object, .. }
            | ProviderError::TooLarge { spc, object, .. } => {
                spc_name.clone_into(spc);
                object_name.clone_into(object);
            }
            ProviderError::MissingAddress { spc }
            | ProviderError::InvalidAddress { spc, .. }
            | ProviderError::TlsConfig { spc, .. }
            | ProviderError::Login { spc, .. } => spc_name.clone_into(spc),
            ProviderError::Client(_) => {}
        }
        e
    }

    /// The HTTP status OpenBao answered with, if the failure was one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ProviderError::Login { cause, .. } | ProviderError::Read { cause, .. } => {
                cause.status()
            }
            _ => None,
        }
    }

    /// OpenBao denied access (HTTP 403, on login or read).
    pub fn is_permission_denied(&self) -> bool {
        match self {
            // A refused login: OpenBao answers 400 when a JWT's claims do not match the role
            // (wrong audience, subject, expired), 401/403 otherwise. All mean "not allowed".
            ProviderError::Login { cause, .. } => matches!(cause.status(), Some(400 | 401 | 403)),
            _ => self.http_status() == Some(403),
        }
    }

    /// The secret, its version or the key does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            ProviderError::Read { cause, .. } => cause.status() == Some(404),
            ProviderError::KeyNotFound { .. } | ProviderError::DeletedVersion { .. } => true,
            _ => false,
        }
    }

    /// Whether the failure is transient (the store was down or slow), as opposed to a
    /// configuration or data problem that retrying will not fix.
    pub fn is_transient(&self) -> bool {
        match self {
            ProviderError::Login { cause, .. } | ProviderError::Read { cause, .. } => {
                cause.is_retryable()
            }
            _ => false,
        }
    }

    /// A short stable string for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ProviderError::MissingAddress { .. } => "missing_address",
            ProviderError::InvalidAddress { .. } => "invalid_address",
            ProviderError::Client(_) => "client_error",
            ProviderError::TlsConfig { .. } => "tls_config",
            ProviderError::Login { cause, .. } => match cause_reason(cause) {
                "permission_denied" => "login_denied",
                "unreachable" | "timeout" | "tls_error" | "connection_error" | "server_error"
                | "rate_limited" => cause_reason(cause),
                _ => "login_failed",
            },
            ProviderError::Read { cause, .. } => cause_reason(cause),
            ProviderError::KeyNotFound { .. } => "key_not_found",
            ProviderError::DeletedVersion { .. } => "deleted_version",
            ProviderError::NoData { .. } => "no_data",
            ProviderError::Decode { .. } => "decode_error",
            ProviderError::TooLarge { .. } => "too_large",
        }
    }
}

fn cause_reason(cause: &Cause) -> &'static str {
    match cause {
        Cause::Status { status, .. } => match status {
            403 => "permission_denied",
            404 => "not_found",
            429 => "rate_limited",
            500.. => "server_error",
            _ => "http_error",
        },
        Cause::Unreachable(_) => "unreachable",
        Cause::Timeout(_) => "timeout",
        Cause::Tls(_) => "tls_error",
        Cause::Connection(_) => "connection_error",
        Cause::InvalidResponse(_) => "invalid_response",
        Cause::InvalidToken => "invalid_token",
        Cause::GaveUp { last, .. } => cause_reason(last),
    }
}

/// Reads volumes' objects from OpenBao. The HTTP clients (one per TLS configuration) and the
/// login-token cache are shared by every volume; dynamic secrets are kept per volume.
pub struct OpenBaoProvider {
    config: OpenBaoConfig,
    /// The client for the default TLS configuration (system roots).
    client: Client,
    tls: TlsClients,
    tokens: TokenCache,
    shared: SharedReads,
    leases: LeaseTable,
    versions: VersionKey,
}

impl fmt::Debug for OpenBaoProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenBaoProvider")
            .field("config", &self.config)
            .field("tls", &self.tls)
            .field("tokens", &self.tokens)
            .field("shared", &self.shared)
            .field("leases", &self.leases)
            .finish_non_exhaustive()
    }
}

/// The settings every client shares (TLS aside).
fn client_builder(config: &OpenBaoConfig) -> reqwest::ClientBuilder {
    Client::builder()
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout)
        .redirect(same_origin_redirects())
        .user_agent(concat!("baofs/", env!("CARGO_PKG_VERSION")))
}

impl OpenBaoProvider {
    /// Builds the provider, its default HTTP client (rustls, the system's roots) and the
    /// process's object-version key.
    pub fn new(config: OpenBaoConfig) -> Result<Self, ProviderError> {
        let versions = VersionKey::generate().map_err(ProviderError::Client)?;
        Self::build(config, versions)
    }

    /// Like `new`, but with the version key of a predecessor process (`version_key()` of the
    /// old process), so unchanged objects keep their versions across a restart.
    pub fn with_version_key(
        config: OpenBaoConfig,
        key: zeroize::Zeroizing<[u8; version::KEY_BYTES]>,
    ) -> Result<Self, ProviderError> {
        Self::build(config, VersionKey::from_raw(key))
    }

    /// The version key, for a successor process. Never log or persist it.
    pub fn version_key(&self) -> &[u8; version::KEY_BYTES] {
        self.versions.raw()
    }

    /// The login-token cache for a successor process: valid tokens and accepted JWT digests.
    /// Holds tokens: only ever into `memfd_secret` memory, never logged or persisted.
    pub fn export_logins(&self) -> zeroize::Zeroizing<Vec<u8>> {
        self.tokens.export()
    }

    /// Takes over a predecessor's `export_logins`, so its volumes read without logging in
    /// again. How many tokens were taken; `None` if `bytes` is not such an export.
    pub fn import_logins(&self, bytes: &[u8]) -> Option<usize> {
        self.tokens.import(bytes)
    }

    /// Every volume's dynamic secrets (kept responses and leases) for a successor process, so
    /// it renews them instead of issuing new credentials to every pod. Holds secrets: only
    /// ever into `memfd_secret` memory, never logged or persisted.
    pub fn export_leases(&self) -> zeroize::Zeroizing<Vec<u8>> {
        self.leases.export()
    }

    /// Takes over a predecessor's `export_leases` (replacing what this process kept for the
    /// same volumes). How many volumes were taken; `None` if `bytes` is not such an export.
    pub fn import_leases(&self, bytes: &[u8]) -> Option<usize> {
        self.leases.import(bytes)
    }

    /// Calls `f` whenever a volume's dynamic secrets changed (issued, renewed, re-issued,
    /// dropped), so a successor's copy can be kept current. Set once.
    pub fn on_lease_change(&self, f: Box<dyn Fn() + Send + Sync>) {
        self.leases.set_on_change(f);
    }

    fn build(config: OpenBaoConfig, versions: VersionKey) -> Result<Self, ProviderError> {
        let client = client_builder(&config)
            .build()
            .map_err(|e| ProviderError::Client(error_chain(&e)))?;
        let share_window = config.share_window;
        Ok(Self {
            config,
            client,
            tls: TlsClients::default(),
            tokens: TokenCache::default(),
            shared: SharedReads::new(share_window),
            leases: LeaseTable::default(),
            versions,
        })
    }

    /// The settings.
    pub fn config(&self) -> &OpenBaoConfig {
        &self.config
    }

    /// The address, client and namespace of `spec`'s requests.
    fn context(&self, spec: &VolumeSpec) -> Result<Ctx, ProviderError> {
        let spc = spec.spc_ref();
        let params = &spec.spc.params;
        let address = params
            .address
            .as_deref()
            .or(self.config.default_address.as_deref())
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ProviderError::MissingAddress { spc: spc.clone() })?;
        let base = parse_address(&spc, address)?;
        let address = base.as_str().trim_end_matches('/').to_owned();
        // TLS settings only matter for https (as upstream, they are ignored for http).
        let (client, tls_id) = if params.tls.is_default() || base.scheme() != "https" {
            (self.client.clone(), [0; 32])
        } else {
            self.tls
                .client(&params.tls, &spc, &address, || client_builder(&self.config))
                .map_err(|e| ProviderError::TlsConfig {
                    spc: spc.clone(),
                    parameter: e.parameter,
                    path: e.path,
                    reason: e.reason,
                })?
        };
        let namespace = match &params.namespace {
            Some(ns) => {
                Some(
                    HeaderValue::from_str(ns).map_err(|_| ProviderError::InvalidAddress {
                        spc: spc.clone(),
                        address: Some(address.clone()),
                        reason: format!("namespace '{ns}' is not a valid header value"),
                    })?,
                )
            }
            None => None,
        };
        let shown = match &params.namespace {
            Some(ns) => format!("{address} (namespace '{ns}')"),
            None => address.clone(),
        };
        Ok(Ctx {
            spc,
            base,
            address,
            shown,
            client,
            tls_id,
            namespace,
            namespace_name: params.namespace.clone(),
        })
    }

    fn auth_state(&self, spec: &VolumeSpec, ctx: &Ctx) -> AuthState {
        match &spec.credentials {
            Credentials::Token(t) => AuthState::Static(t.clone()),
            Credentials::Jwt(jwt) => {
                let claims = auth::jwt_claims(jwt);
                let key = LoginKey {
                    address: ctx.address.clone(),
                    namespace: ctx.namespace_name.clone(),
                    tls: ctx.tls_id,
                    mount: spec.spc.params.auth_mount.clone(),
                    role: spec.spc.params.role_name.clone(),
                    subject: claims.subject,
                };
                AuthState::Login {
                    acceptance: key.acceptance(jwt),
                    key,
                    jwt: jwt.clone(),
                    expires: claims.expires,
                    current: None,
                }
            }
        }
    }

    /// The identity part of a shared-read key: where, through which TLS configuration, and
    /// as whom (a digest of the raw token, or the login identity).
    fn share_identity(ctx: &Ctx, auth: &AuthState) -> [u8; 32] {
        match auth {
            AuthState::Static(t) => shared::digest(&[
                b"token",
                ctx.address.as_bytes(),
                ctx.namespace_name.as_deref().unwrap_or("\0").as_bytes(),
                &ctx.tls_id,
                &shared::digest(&[t.expose().as_bytes()]),
            ]),
            AuthState::Login { key, .. } => key.digest(),
        }
    }

    async fn fetch_volume(&self, spec: &VolumeSpec) -> Result<Vec<FetchedObject>, ProviderError> {
        let ctx = self.context(spec)?;
        let mut auth = self.auth_state(spec, &ctx);
        let deadline = Instant::now() + self.config.retry_deadline;

        // Each distinct request is made once, in first-use order.
        let objects = &spec.spc.objects;
        let mut reads: Vec<(ReadKey, &ObjectSpec)> = Vec::new();
        let mut read_of = Vec::with_capacity(objects.len());
        for o in objects {
            let key = read_key(o);
            let i = match reads.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    reads.push((key, o));
                    reads.len() - 1
                }
            };
            read_of.push(i);
        }

        let slot = self.leases.slot(&spec.id);
        let (result, changed) = {
            let mut leases = slot.lock().await;
            let before = leases.revision();
            let result = self
                .fetch_locked(
                    &ctx,
                    &mut auth,
                    spec,
                    &reads,
                    &read_of,
                    &mut leases,
                    deadline,
                )
                .await;
            let in_use: Vec<&ReadKey> = reads.iter().map(|(k, _)| k).collect();
            leases.prune(&in_use, Instant::now());
            (result, leases.revision() != before)
        };
        self.leases.done(&spec.id, slot);
        if changed {
            self.leases.changed();
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_locked(
        &self,
        ctx: &Ctx,
        auth: &mut AuthState,
        spec: &VolumeSpec,
        reads: &[(ReadKey, &ObjectSpec)],
        read_of: &[usize],
        leases: &mut VolumeLeases,
        deadline: Instant,
    ) -> Result<Vec<FetchedObject>, ProviderError> {
        let mut owned: Vec<Source> = Vec::with_capacity(reads.len());
        let result = async {
            for (key, first) in reads {
                let plan = leases.held.get(key).map(|h| h.plan(Instant::now()));
                let value = match plan {
                    Some(Plan::Reuse) => Source::Held,
                    Some(Plan::Renew) => {
                        match self
                            .renew_lease(ctx, auth, first, key, leases, deadline)
                            .await
                        {
                            Ok(()) => Source::Held,
                            Err(Renewal::Refused) => {
                                leases.forget(key);
                                self.issue(ctx, auth, first, key, leases, deadline).await?
                            }
                            Err(Renewal::Failed(e)) => return Err(e),
                        }
                    }
                    Some(Plan::Reissue) => {
                        self.issue(ctx, auth, first, key, leases, deadline).await?
                    }
                    None if key.method == ObjectMethod::Get => {
                        self.shared_read(ctx, auth, first, key, leases, deadline)
                            .await?
                    }
                    None => self.issue(ctx, auth, first, key, leases, deadline).await?,
                };
                owned.push(value);
            }
            // A volume holding leases also needs its login token kept alive: OpenBao revokes
            // a token's leases with it.
            let token_refresh = match &*auth {
                AuthState::Login { key, .. } if !leases.held.is_empty() => self
                    .tokens
                    .slot(key)
                    .lock()
                    .await
                    .as_ref()
                    .and_then(CachedToken::refresh_at),
                _ => None,
            };
            spec.spc
                .objects
                .iter()
                .zip(read_of)
                .map(|(o, &i)| {
                    let (key, _) = &reads[i];
                    let (response, held) = match &owned[i] {
                        Source::Owned(v) => (v, None),
                        Source::Shared(v) => (v.value(), None),
                        Source::Held => {
                            let h = leases
                                .held
                                .get(key)
                                .ok_or_else(|| extract_error(&ctx.spc, o, ExtractError::NoData))?;
                            (h.response(), Some(h))
                        }
                    };
                    let value = kv::extract(response, o, self.config.max_object_size)
                        .map_err(|e| extract_error(&ctx.spc, o, e))?;
                    let version =
                        self.versions
                            .version(o, value.expose(), kv::kv2_version(response));
                    let refresh_at = held
                        .and_then(Held::action_at)
                        .into_iter()
                        .chain(token_refresh)
                        .min()
                        .map(wall_clock);
                    Ok(FetchedObject {
                        path: o.path.clone(),
                        value,
                        version,
                        refresh_at,
                    })
                })
                .collect::<Result<Vec<_>, ProviderError>>()
        }
        .await;
        for source in owned {
            if let Source::Owned(v) = source {
                kv::zeroize_value(v);
            }
        }
        result
    }

    /// A `GET` shared with every volume of the same identity (see `shared`): the response of a
    /// request in flight or made within the share window, else a new request whose outcome is
    /// kept for the others. A response with a lease is a dynamic secret: it stays this
    /// volume's, and the key is never shared again.
    async fn shared_read(
        &self,
        ctx: &Ctx,
        auth: &mut AuthState,
        object: &ObjectSpec,
        key: &ReadKey,
        leases: &mut VolumeLeases,
        deadline: Instant,
    ) -> Result<Source, ProviderError> {
        // The caller's right to the shared value: its token (for a JWT: one OpenBao accepted
        // this very JWT for) must be at hand first. Free when the token is cached.
        self.token(ctx, auth, deadline).await?;
        let share_key = ShareKey {
            identity: Self::share_identity(ctx, auth),
            path: key.path.clone(),
            query: key.query.clone(),
        };
        let arrived = Instant::now();
        let slot = self.shared.slot(&share_key);
        let mut outcome = slot.lock().await;
        let usable = outcome
            .as_ref()
            .and_then(|o| o.usable(arrived, Instant::now(), self.shared.window()));
        match usable {
            Some(Shared::Value(v)) => {
                return Ok(Source::Shared(Arc::clone(v)));
            }
            Some(Shared::Failed(e)) => {
                return Err(e.reattributed(&ctx.spc, object.path.as_str()));
            }
            Some(Shared::Dynamic) => {
                drop(outcome);
                return self.issue(ctx, auth, object, key, leases, deadline).await;
            }
            None => {}
        }
        match self.issue(ctx, auth, object, key, leases, deadline).await {
            Ok(Source::Owned(v)) => {
                let v = Arc::new(SharedValue::new(v));
                *outcome = Some(Outcome {
                    at: Instant::now(),
                    shared: Shared::Value(Arc::clone(&v)),
                });
                Ok(Source::Shared(v))
            }
            Ok(source) => {
                *outcome = Some(Outcome {
                    at: Instant::now(),
                    shared: Shared::Dynamic,
                });
                Ok(source)
            }
            // A failed login is this JWT's own; anything else is OpenBao's answer to everyone.
            Err(e @ ProviderError::Login { .. }) => {
                *outcome = None;
                Err(e)
            }
            Err(e) => {
                *outcome = Some(Outcome {
                    at: Instant::now(),
                    shared: Shared::Failed(e.clone()),
                });
                Err(e)
            }
        }
    }

    /// Makes `key`'s request. A dynamic secret (leased, or from a write) is kept in `leases`
    /// (`Source::Held`); anything else is returned.
    async fn issue(
        &self,
        ctx: &Ctx,
        auth: &mut AuthState,
        object: &ObjectSpec,
        key: &ReadKey,
        leases: &mut VolumeLeases,
        deadline: Instant,
    ) -> Result<Source, ProviderError> {
        let reissue = leases.held.contains_key(key);
        let value = self
            .call(
                ctx,
                auth,
                object.path.as_str(),
                http_method(key.method),
                &key.path,
                key.query.as_deref(),
                key.body.as_deref().map(str::as_bytes),
                deadline,
            )
            .await?;
        let now = Instant::now();
        match Held::from_response(value, key.method.is_write(), now, SystemTime::now()) {
            Ok(held) => {
                match held.lease() {
                    Some(l) => tracing::info!(
                        spc = %ctx.spc,
                        object = %object.path,
                        path = %key.path,
                        lease = l.path(),
                        ttl_secs = l.ttl.as_secs(),
                        renewable = l.renewable,
                        reissued = reissue,
                        "issued a dynamic secret"
                    ),
                    None => tracing::info!(
                        spc = %ctx.spc,
                        object = %object.path,
                        path = %key.path,
                        reissued = reissue,
                        "issued a dynamic secret (no lease)"
                    ),
                }
                leases.put(key.clone(), held, now);
                Ok(Source::Held)
            }
            Err(value) => Ok(Source::Owned(value)),
        }
    }

    /// `PUT sys/leases/renew` for `key`'s lease, asking for its original TTL again.
    async fn renew_lease(
        &self,
        ctx: &Ctx,
        auth: &mut AuthState,
        object: &ObjectSpec,
        key: &ReadKey,
        leases: &mut VolumeLeases,
        deadline: Instant,
    ) -> Result<(), Renewal> {
        let Some(lease) = leases.held.get(key).and_then(Held::lease) else {
            return Err(Renewal::Refused);
        };
        let (path, ttl) = (lease.path().to_owned(), lease.ttl);
        let body = lease_body(&lease.id, Some(ttl));
        let result = self
            .call(
                ctx,
                auth,
                object.path.as_str(),
                Method::PUT,
                RENEW_PATH,
                None,
                Some(body.as_slice()),
                deadline,
            )
            .await;
        let value = match result {
            Ok(v) => v,
            Err(e) if e.is_transient() => return Err(Renewal::Failed(e)),
            Err(e) => {
                tracing::info!(
                    spc = %ctx.spc,
                    object = %object.path,
                    lease = %path,
                    error = %e,
                    "lease renewal refused; issuing the secret again"
                );
                return Err(Renewal::Refused);
            }
        };
        let granted = Duration::from_secs(
            value
                .get("lease_duration")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        );
        let renewable = value
            .get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        kv::zeroize_value(value);
        if granted.is_zero() {
            return Err(Renewal::Refused);
        }
        leases.renewed(key, granted, renewable, Instant::now());
        tracing::info!(
            spc = %ctx.spc,
            object = %object.path,
            lease = %path,
            granted_secs = granted.as_secs(),
            capped = granted < ttl,
            "renewed a dynamic secret's lease"
        );
        Ok(())
    }

    /// Revokes every lease `spec`'s volume still holds (`PUT sys/leases/revoke`).
    async fn release_volume(&self, spec: &VolumeSpec) {
        let Some(slot) = self.leases.take(&spec.id) else {
            return;
        };
        let ids = slot.lock().await.drain(Instant::now());
        if ids.is_empty() {
            return;
        }
        let ctx = match self.context(spec) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(volume = %spec.id, error = %e, "cannot revoke the volume's leases; they end at their TTL");
                return;
            }
        };
        let mut auth = self.auth_state(spec, &ctx);
        let deadline = Instant::now() + self.config.retry_deadline;
        let (mut revoked, mut failed) = (0u32, 0u32);
        for id in ids {
            let lease = lease::lease_path(id.expose()).to_owned();
            let body = lease_body(&id, None);
            let result = self
                .call(
                    &ctx,
                    &mut auth,
                    "(volume release)",
                    Method::PUT,
                    REVOKE_PATH,
                    None,
                    Some(body.as_slice()),
                    deadline,
                )
                .await;
            match result {
                Ok(v) => {
                    kv::zeroize_value(v);
                    revoked += 1;
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(
                        volume = %spec.id,
                        spc = %ctx.spc,
                        lease = %lease,
                        error = %e,
                        "revoking a dynamic secret's lease failed; it ends at its TTL \
                         (the token's policy needs 'update' on sys/leases/revoke)"
                    );
                }
            }
        }
        tracing::info!(volume = %spec.id, spc = %ctx.spc, revoked, failed, "released the volume's dynamic secrets");
    }

    /// One authenticated request: logs in first if needed, and once more if a cached login
    /// token is refused (403). Returns the parsed response.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        ctx: &Ctx,
        auth: &mut AuthState,
        object: &str,
        method: Method,
        path: &str,
        query: Option<&str>,
        body: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<Value, ProviderError> {
        let url = api_url(&ctx.base, path, query);
        let op = operation(&method, path);
        let request_error = |cause| ProviderError::Read {
            spc: ctx.spc.clone(),
            object: object.to_owned(),
            operation: op,
            path: path.to_owned(),
            address: ctx.shown.clone(),
            cause: Box::new(cause),
        };
        let deleted = || ProviderError::DeletedVersion {
            spc: ctx.spc.clone(),
            object: object.to_owned(),
            path: path.to_owned(),
        };
        tracing::debug!(spc = %ctx.spc, object, path, method = %method, "OpenBao request");
        let token = self.token(ctx, auth, deadline).await?;
        let cause = match self
            .send(ctx, method.clone(), &url, &token, body, deadline)
            .await
        {
            Ok(v) => return Ok(v),
            Err(ReadFailure::DeletedVersion) => return Err(deleted()),
            Err(ReadFailure::Cause(c)) => c,
        };
        let AuthState::Login {
            key, jwt, current, ..
        } = auth
        else {
            return Err(request_error(cause));
        };
        // Only a token from the cache may have expired; a fresh one is refused for good.
        let from_cache = matches!(current, Some((_, false)));
        if cause.status() != Some(403) || !from_cache {
            return Err(request_error(cause));
        }
        tracing::info!(spc = %ctx.spc, path, "cached OpenBao token refused, logging in again");
        let token = self
            .cached_login(ctx, key, jwt, Some(&token), deadline)
            .await?;
        *current = Some((token.clone(), true));
        match self.send(ctx, method, &url, &token, body, deadline).await {
            Ok(v) => Ok(v),
            Err(ReadFailure::DeletedVersion) => Err(deleted()),
            Err(ReadFailure::Cause(c)) => Err(request_error(c)),
        }
    }

    /// The token to read with: the caller's, or its identity's cached login token (renewed at
    /// two thirds of its lease when renewable), or a fresh login. A JWT OpenBao has not accepted
    /// yet logs in first, even when its identity has a token: its claims are not trusted until
    /// then.
    async fn token(
        &self,
        ctx: &Ctx,
        auth: &mut AuthState,
        deadline: Instant,
    ) -> Result<SecretString, ProviderError> {
        let (key, jwt, acceptance, expires, current) = match auth {
            AuthState::Static(t) => return Ok(t.clone()),
            AuthState::Login {
                current: Some((t, _)),
                ..
            } => return Ok(t.clone()),
            AuthState::Login {
                key,
                jwt,
                acceptance,
                expires,
                current,
            } => (key, jwt, acceptance, expires, current),
        };
        let slot = self.tokens.slot(key);
        let mut guard = slot.lock().await;
        if !self.tokens.is_accepted(acceptance) {
            let now = Instant::now();
            if guard.as_ref().is_some_and(|c| c.is_fresh(now)) {
                // The identity has a token: this JWT only needs to prove itself. Its login
                // runs outside the slot so other volumes keep reading meanwhile; its token is
                // not kept (the identity's token, which its leases hang on, stays in use).
                drop(guard);
                let login = self.login(ctx, key, jwt, deadline).await?;
                self.tokens.accept(*acceptance, *expires);
                guard = slot.lock().await;
                match guard.as_ref().filter(|c| c.is_fresh(Instant::now())) {
                    Some(cached) => {
                        let t = cached.token.clone();
                        *current = Some((t.clone(), false));
                        return Ok(t);
                    }
                    None => {
                        *guard = Some(CachedToken::new(
                            login.token.clone(),
                            login.lease,
                            login.renewable,
                            now,
                        ));
                        *current = Some((login.token.clone(), true));
                        return Ok(login.token);
                    }
                }
            }
            let t = self.login_into(ctx, key, jwt, &mut guard, deadline).await?;
            self.tokens.accept(*acceptance, *expires);
            *current = Some((t.clone(), true));
            return Ok(t);
        }
        let now = Instant::now();
        if let Some(cached) = guard.as_ref().filter(|c| c.is_fresh(now)) {
            let t = cached.token.clone();
            *current = Some((t.clone(), false));
            return Ok(t);
        }
        if let Some(cached) = guard.as_mut().filter(|c| c.can_renew(now)) {
            match self.renew_token(ctx, key, cached, deadline).await {
                Ok(()) => {
                    let t = cached.token.clone();
                    *current = Some((t.clone(), false));
                    return Ok(t);
                }
                Err(cause) => tracing::info!(
                    spc = %ctx.spc,
                    mount = %key.mount,
                    role = %key.role,
                    cause = %cause,
                    "renewing the OpenBao token failed; logging in again"
                ),
            }
        }
        let t = self.login_into(ctx, key, jwt, &mut guard, deadline).await?;
        *current = Some((t.clone(), true));
        Ok(t)
    }

    /// `POST auth/token/renew-self`, asking for the token's original TTL again.
    async fn renew_token(
        &self,
        ctx: &Ctx,
        key: &LoginKey,
        cached: &mut CachedToken,
        deadline: Instant,
    ) -> Result<(), Cause> {
        let url = api_url(&ctx.base, "auth/token/renew-self", None);
        let body = format!("{{\"increment\":{}}}", cached.ttl().as_secs());
        let (status, value) = self
            .request(
                ctx,
                Method::POST,
                &url,
                Some(&cached.token),
                Some(body.as_bytes()),
                deadline,
            )
            .await?;
        if !status.is_success() {
            return Err(status_cause(status, value));
        }
        let (lease, renewable) = value
            .get("auth")
            .map(|a| {
                (
                    a.get("lease_duration").and_then(Value::as_u64).unwrap_or(0),
                    a.get("renewable").and_then(Value::as_bool).unwrap_or(false),
                )
            })
            .unwrap_or((0, false));
        kv::zeroize_value(value);
        if lease == 0 {
            return Err(Cause::InvalidResponse(
                "the renewal response has no 'auth.lease_duration'".to_owned(),
            ));
        }
        let lease = Duration::from_secs(lease);
        cached.renewed(lease, renewable, Instant::now());
        tracing::info!(
            spc = %ctx.spc,
            mount = %key.mount,
            role = %key.role,
            lease_secs = lease.as_secs(),
            capped = lease < cached.ttl(),
            "renewed the OpenBao login token"
        );
        Ok(())
    }

    /// Logs in again unless another caller already replaced `failed`.
    async fn cached_login(
        &self,
        ctx: &Ctx,
        key: &LoginKey,
        jwt: &SecretString,
        failed: Option<&SecretString>,
        deadline: Instant,
    ) -> Result<SecretString, ProviderError> {
        let slot = self.tokens.slot(key);
        let mut guard = slot.lock().await;
        if let Some(cached) = guard.as_ref() {
            let replaced = failed.is_some_and(|f| *f != cached.token);
            if replaced && cached.is_fresh(Instant::now()) {
                return Ok(cached.token.clone());
            }
        }
        self.login_into(ctx, key, jwt, &mut guard, deadline).await
    }

    async fn login_into(
        &self,
        ctx: &Ctx,
        key: &LoginKey,
        jwt: &SecretString,
        slot: &mut Option<CachedToken>,
        deadline: Instant,
    ) -> Result<SecretString, ProviderError> {
        *slot = None;
        let started = Instant::now();
        let login = self.login(ctx, key, jwt, deadline).await?;
        *slot = Some(CachedToken::new(
            login.token.clone(),
            login.lease,
            login.renewable,
            started,
        ));
        Ok(login.token)
    }

    /// `POST /v1/auth/<mount>/login {"jwt", "role"}`: the token and its lease.
    async fn login(
        &self,
        ctx: &Ctx,
        key: &LoginKey,
        jwt: &SecretString,
        deadline: Instant,
    ) -> Result<Login, ProviderError> {
        let login_error = |cause| ProviderError::Login {
            spc: ctx.spc.clone(),
            address: ctx.shown.clone(),
            mount: key.mount.clone(),
            role: key.role.clone(),
            cause: Box::new(cause),
        };
        let url = api_url(&ctx.base, &format!("auth/{}/login", key.mount), None);
        let body = login_body(jwt, &key.role);
        let (status, value) = self
            .request(
                ctx,
                Method::POST,
                &url,
                None,
                Some(body.as_slice()),
                deadline,
            )
            .await
            .map_err(login_error)?;
        if !status.is_success() {
            return Err(login_error(status_cause(status, value)));
        }
        let login = parse_login(value).map_err(login_error)?;
        tracing::info!(
            spc = %ctx.spc,
            mount = %key.mount,
            role = %key.role,
            lease_secs = login.lease.as_secs(),
            renewable = login.renewable,
            "logged in to OpenBao"
        );
        Ok(login)
    }

    /// One request with `token`: its parsed body on success.
    async fn send(
        &self,
        ctx: &Ctx,
        method: Method,
        url: &Url,
        token: &SecretString,
        body: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<Value, ReadFailure> {
        let (status, value) = self
            .request(ctx, method, url, Some(token), body, deadline)
            .await
            .map_err(ReadFailure::Cause)?;
        if status.is_success() {
            if let Some(w) = value.get("warnings").and_then(Value::as_array) {
                for w in w.iter().filter_map(Value::as_str) {
                    // A renewal capped by the max TTL is expected, and handled.
                    if url.path().ends_with(RENEW_PATH) {
                        tracing::debug!(path = url.path(), warning = w, "OpenBao warning");
                    } else {
                        tracing::warn!(path = url.path(), warning = w, "OpenBao warning");
                    }
                }
            }
            return Ok(value);
        }
        if status == StatusCode::NOT_FOUND && kv::is_deleted_version(&value) {
            kv::zeroize_value(value);
            return Err(ReadFailure::DeletedVersion);
        }
        Err(ReadFailure::Cause(status_cause(status, value)))
    }

    /// One request, retried on transient failures until `deadline`. Returns the status and
    /// the parsed body (`Null` if empty) for every status below 500 except 429.
    async fn request(
        &self,
        ctx: &Ctx,
        method: Method,
        url: &Url,
        token: Option<&SecretString>,
        body: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<(StatusCode, Value), Cause> {
        let started = Instant::now();
        let mut backoff = INITIAL_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let cause = match self.attempt(ctx, &method, url, token, body).await {
                Ok(r) => return Ok(r),
                Err(c) => c,
            };
            if !cause.is_retryable() {
                return Err(cause);
            }
            let delay = jittered(backoff);
            if Instant::now() + delay >= deadline {
                return Err(Cause::GaveUp {
                    attempts,
                    elapsed: started.elapsed(),
                    last: Box::new(cause),
                });
            }
            tracing::debug!(
                path = url.path(),
                attempt = attempts,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                cause = %cause,
                "retrying OpenBao request"
            );
            tokio::time::sleep(delay).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn attempt(
        &self,
        ctx: &Ctx,
        method: &Method,
        url: &Url,
        token: Option<&SecretString>,
        body: Option<&[u8]>,
    ) -> Result<(StatusCode, Value), Cause> {
        let mut req = ctx.client.request(method.clone(), url.clone());
        if let Some(t) = token {
            let mut value = HeaderValue::from_str(t.expose()).map_err(|_| Cause::InvalidToken)?;
            value.set_sensitive(true);
            req = req.header(TOKEN_HEADER, value);
        }
        if let Some(ns) = &ctx.namespace {
            req = req.header(NAMESPACE_HEADER, ns.clone());
        }
        if let Some(b) = body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(b.to_vec());
        }
        let timeout = self.config.request_timeout;
        let sent = req.send().await;
        let status = sent.as_ref().ok().map(|r| r.status().as_u16());
        crate::metrics::record_openbao_request(method.as_str(), url.path(), status);
        let mut resp = sent.map_err(|e| transport_cause(&e, timeout))?;
        let status = resp.status();

        let limit = self.config.max_body_size();
        let too_large = || Cause::InvalidResponse(format!("response body over {limit} bytes"));
        let expected = resp.content_length().unwrap_or(0);
        if expected > limit as u64 {
            return Err(too_large());
        }
        let mut buf = ZeroizingBuf::with_capacity(usize::try_from(expected).unwrap_or(0));
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| transport_cause(&e, timeout))?
        {
            if buf.len().saturating_add(chunk.len()) > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        let value = if buf.as_slice().iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice::<Value>(buf.as_slice()) {
                Ok(v) => v,
                // serde_json syntax errors carry a position, never content.
                Err(e) if status.is_success() => {
                    return Err(Cause::InvalidResponse(format!("body is not JSON ({e})")));
                }
                Err(_) => Value::Null,
            }
        };
        drop(buf);
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(status_cause(status, value));
        }
        Ok((status, value))
    }
}

impl Provider for OpenBaoProvider {
    fn fetch<'a>(
        &'a self,
        spec: &'a VolumeSpec,
    ) -> BoxFuture<'a, Result<Vec<FetchedObject>, ProviderError>> {
        Box::pin(self.fetch_volume(spec))
    }

    fn release<'a>(&'a self, spec: &'a VolumeSpec) -> BoxFuture<'a, ()> {
        Box::pin(self.release_volume(spec))
    }
}

/// Per-request context: where, through which client, in which namespace.
struct Ctx {
    spc: String,
    base: Url,
    /// `base` without a trailing slash (the token cache key).
    address: String,
    /// `address` with the namespace, for messages.
    shown: String,
    client: Client,
    /// Digest of the TLS configuration (zeros: the default).
    tls_id: [u8; 32],
    namespace: Option<HeaderValue>,
    namespace_name: Option<String>,
}

/// How a fetch authenticates. One per fetch, on the stack: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum AuthState {
    /// A token given by the caller.
    Static(SecretString),
    /// A login token: the cache key (the identity), this volume's JWT, what marks it accepted
    /// by OpenBao and until when, and the token in use in this fetch (with whether it came from
    /// a login made during this fetch).
    Login {
        key: LoginKey,
        jwt: SecretString,
        acceptance: [u8; 32],
        expires: Option<SystemTime>,
        current: Option<(SecretString, bool)>,
    },
}

/// Where an object's response is.
enum Source {
    /// Kept in the volume's leases (a dynamic secret).
    Held,
    /// Fetched for this volume only.
    Owned(Value),
    /// Shared with other volumes of the same identity.
    Shared(Arc<SharedValue>),
}

/// A successful login.
struct Login {
    token: SecretString,
    lease: Duration,
    renewable: bool,
}

enum ReadFailure {
    DeletedVersion,
    Cause(Cause),
}

/// Why a lease was not renewed.
enum Renewal {
    /// OpenBao refused (the lease is gone or not renewable): issue the secret again.
    Refused,
    /// OpenBao could not be reached: the fetch fails, the last values stay served.
    Failed(ProviderError),
}

/// The request an object makes: objects with equal keys share one response.
fn read_key(o: &ObjectSpec) -> ReadKey {
    ReadKey {
        path: o.api_path().to_owned(),
        query: o.query().map(str::to_owned),
        method: o.method,
        body: o
            .secret_args
            .as_ref()
            .map(|a| Value::Object(a.clone()).to_string()),
    }
}

fn http_method(m: ObjectMethod) -> Method {
    match m {
        ObjectMethod::Get => Method::GET,
        ObjectMethod::Put => Method::PUT,
        ObjectMethod::Post => Method::POST,
    }
}

/// What a request does, for messages.
fn operation(method: &Method, path: &str) -> &'static str {
    if path == RENEW_PATH {
        "renewing a lease at"
    } else if path == REVOKE_PATH {
        "revoking a lease at"
    } else if *method == Method::GET {
        "reading"
    } else {
        "issuing a secret at"
    }
}

/// `{"lease_id": …[, "increment": …]}` in a buffer wiped when dropped.
fn lease_body(id: &SecretString, increment: Option<Duration>) -> ZeroizingBuf {
    let mut buf = ZeroizingBuf::with_capacity(id.expose().len() + 48);
    let mut body = serde_json::Map::new();
    body.insert("lease_id".to_owned(), Value::String(id.expose().to_owned()));
    if let Some(i) = increment {
        body.insert("increment".to_owned(), Value::from(i.as_secs()));
    }
    let body = Value::Object(body);
    // Serializing into memory cannot fail.
    if serde_json::to_writer(&mut buf, &body).is_err() {
        buf.clear();
    }
    kv::zeroize_value(body);
    buf
}

/// The wall-clock time of a monotonic instant (for the poller).
fn wall_clock(at: Instant) -> SystemTime {
    SystemTime::now() + at.saturating_duration_since(Instant::now())
}

fn extract_error(spc: &str, object: &ObjectSpec, e: ExtractError) -> ProviderError {
    let spc = spc.to_owned();
    let path = object.api_path().to_owned();
    let object_name = object.path.to_string();
    match e {
        ExtractError::NoData => ProviderError::NoData {
            spc,
            object: object_name,
            path,
        },
        ExtractError::KeyNotFound(key) => ProviderError::KeyNotFound {
            spc,
            object: object_name,
            path,
            key,
        },
        ExtractError::DeletedVersion => ProviderError::DeletedVersion {
            spc,
            object: object_name,
            path,
        },
        ExtractError::Decode(encoding) => ProviderError::Decode {
            spc,
            object: object_name,
            path,
            encoding,
        },
        ExtractError::TooLarge { size, limit } => ProviderError::TooLarge {
            spc,
            object: object_name,
            path,
            size,
            limit,
        },
    }
}

/// Parses an OpenBao address: an http(s) URL without credentials, query or fragment.
fn parse_address(spc: &str, address: &str) -> Result<Url, ProviderError> {
    let shown = (!address.contains('@')).then(|| address.to_owned());
    let invalid = |reason: &str| ProviderError::InvalidAddress {
        spc: spc.to_owned(),
        address: shown.clone(),
        reason: reason.to_owned(),
    };
    if !address.contains("://") {
        return Err(invalid("it must start with http:// or https://"));
    }
    let url = Url::parse(address).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("it must not contain credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment"));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(invalid("it has no host"));
    }
    Ok(url)
}

/// `{base}/v1/{path}?{query}`, each path segment percent-encoded.
fn api_url(base: &Url, path: &str, query: Option<&str>) -> Url {
    let mut url = base.clone();
    // `parse_address` rejected URLs that cannot be a base, so this always succeeds.
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty();
        segments.push("v1");
        segments.extend(path.split('/').filter(|s| !s.is_empty()));
    }
    url.set_query(query);
    url
}

/// `{"jwt": ..., "role": ...}` in a buffer wiped when dropped.
fn login_body(jwt: &SecretString, role: &str) -> ZeroizingBuf {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        jwt: &'a str,
        role: &'a str,
    }
    let mut buf = ZeroizingBuf::with_capacity(jwt.expose().len() + role.len() + 64);
    // Serializing two strings into memory cannot fail.
    if serde_json::to_writer(
        &mut buf,
        &Body {
            jwt: jwt.expose(),
            role,
        },
    )
    .is_err()
    {
        buf.clear();
    }
    buf
}

/// `auth.client_token`, `auth.lease_duration` and `auth.renewable` of a login response; the
/// rest is wiped.
fn parse_login(mut value: Value) -> Result<Login, Cause> {
    let auth = value.get_mut("auth").map(Value::take);
    kv::zeroize_value(value);
    let Some(Value::Object(mut auth)) = auth else {
        if let Some(a) = auth {
            kv::zeroize_value(a);
        }
        return Err(Cause::InvalidResponse(
            "the login response has no 'auth'".to_owned(),
        ));
    };
    let lease = auth
        .get("lease_duration")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let renewable = auth
        .get("renewable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let token = auth.remove("client_token");
    kv::zeroize_value(Value::Object(auth));
    match token {
        Some(Value::String(t)) if !t.is_empty() => Ok(Login {
            token: SecretString::new(t),
            lease: Duration::from_secs(lease),
            renewable,
        }),
        other => {
            if let Some(o) = other {
                kv::zeroize_value(o);
            }
            Err(Cause::InvalidResponse(
                "the login response has no 'auth.client_token'".to_owned(),
            ))
        }
    }
}

/// A `Cause::Status` from an error response, with OpenBao's `errors` text; the body is wiped.
fn status_cause(status: StatusCode, body: Value) -> Cause {
    let errors = errors_text(&body);
    kv::zeroize_value(body);
    Cause::Status {
        status: status.as_u16(),
        errors,
    }
}

/// OpenBao's `errors` array as one line, whitespace collapsed, bounded.
fn errors_text(body: &Value) -> String {
    let Some(errors) = body.get("errors").and_then(Value::as_array) else {
        return String::new();
    };
    let joined = errors
        .iter()
        .filter_map(Value::as_str)
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    truncate(joined, MAX_ERROR_TEXT)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Classifies a transport error from reqwest. The message is the source chain below reqwest's
/// own (which would include the URL and thus the query).
fn transport_cause(e: &reqwest::Error, timeout: Duration) -> Cause {
    if e.is_timeout() {
        return Cause::Timeout(timeout);
    }
    if let Some(problem) = tls::describe_failure(e) {
        return Cause::Tls(problem);
    }
    let chain = error_chain(e);
    let lower = chain.to_ascii_lowercase();
    if [
        "tls",
        "certificate",
        "handshake",
        "invalidcontenttype",
        "corrupt message",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        Cause::Tls(chain)
    } else if e.is_connect() {
        Cause::Unreachable(chain)
    } else {
        Cause::Connection(chain)
    }
}

/// The messages of `e`'s sources, joined, without repeats; `e`'s own message if it has none.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        // hyper-util's "client error (Connect)" says nothing its sources do not.
        let generic = msg.starts_with("client error (") && s.source().is_some();
        if !generic && !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    truncate(parts.join(": "), MAX_ERROR_TEXT)
}

/// `d` scaled by a factor in [0.5, 1.0), from the clock's nanoseconds.
fn jittered(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let factor = 0.5 + f64::from(nanos % 1000) / 2000.0;
    d.mul_f64(factor)
}

/// Follows redirects only within the same origin, so the token is never sent elsewhere.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if same && attempt.previous().len() <= MAX_REDIRECTS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

#[cfg(test)]
mod tests;
