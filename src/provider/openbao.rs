//! The OpenBao provider: logs in, reads secrets over HTTP and extracts each object's value.
//!
//! This is the only module that talks HTTP (`reqwest` stays inside `provider/openbao*`). It
//! follows the OpenBao CSI provider's behaviour (anchors.md §10–§12) and fixes its known flaws:
//! login tokens are cached for their lease (not re-requested every poll), a whole secret is
//! written without the response envelope so its content is stable, transient failures are
//! retried with backoff, and every error names the SPC, the object and the OpenBao path.
//!
//! Submodules: `kv` (pure extraction from a parsed response), `auth` (the login-token cache).
//! Secret values and tokens never reach an error, a log line or `Debug`.

mod auth;
pub mod kv;

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::Value;

use crate::provider::{BoxFuture, FetchedObject, Provider};
use crate::secret::SecretString;
use crate::spc::{Encoding, ObjectSpec};
use crate::volume::{Credentials, VolumeSpec};

use auth::{CachedToken, LoginKey, TokenCache};
use kv::{ExtractError, ZeroizingBuf};

/// Default timeout of one HTTP request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time during which transient failures are retried.
pub const DEFAULT_RETRY_DEADLINE: Duration = Duration::from_secs(30);
/// Default largest object value.
pub const DEFAULT_MAX_OBJECT_SIZE: usize = 1 << 20;
/// The header carrying the OpenBao token.
const TOKEN_HEADER: &str = "X-Vault-Token";
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
}

impl Default for OpenBaoConfig {
    fn default() -> Self {
        Self {
            default_address: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_deadline: DEFAULT_RETRY_DEADLINE,
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
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
#[derive(Debug, thiserror::Error)]
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
    /// Reading a secret failed.
    #[error(
        "SecretProviderClass '{spc}': object '{object}': reading OpenBao path '{path}' at {address} failed: {cause}"
    )]
    Read {
        /// The SPC.
        spc: String,
        /// The (first) object reading this path.
        object: String,
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

/// Reads volumes' objects from OpenBao. One HTTP client and one login-token cache are shared by
/// every volume.
pub struct OpenBaoProvider {
    config: OpenBaoConfig,
    client: Client,
    tokens: TokenCache,
}

impl fmt::Debug for OpenBaoProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenBaoProvider")
            .field("config", &self.config)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl OpenBaoProvider {
    /// Builds the provider and its HTTP client (rustls, webpki roots).
    pub fn new(config: OpenBaoConfig) -> Result<Self, ProviderError> {
        let client = Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .redirect(same_origin_redirects())
            .user_agent(concat!("baofs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Client(error_chain(&e)))?;
        Ok(Self {
            config,
            client,
            tokens: TokenCache::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &OpenBaoConfig {
        &self.config
    }

    async fn fetch_volume(&self, spec: &VolumeSpec) -> Result<Vec<FetchedObject>, ProviderError> {
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
        let ctx = Ctx {
            address: base.as_str().trim_end_matches('/').to_owned(),
            base,
            spc,
        };
        let mut auth = match &spec.credentials {
            Credentials::Token(t) => AuthState::Static(t.clone()),
            Credentials::Jwt(jwt) => AuthState::Login {
                key: LoginKey {
                    address: ctx.address.clone(),
                    mount: params.auth_mount.clone(),
                    role: params.role_name.clone(),
                    jwt: jwt.clone(),
                },
                current: None,
            },
        };
        let deadline = Instant::now() + self.config.retry_deadline;

        // Each distinct (path, query) is read once, in first-use order.
        let objects = &spec.spc.objects;
        let mut reads: Vec<(&str, Option<&str>, &ObjectSpec)> = Vec::new();
        let mut read_of = Vec::with_capacity(objects.len());
        for o in objects {
            let key = (o.api_path(), o.query());
            let i = match reads.iter().position(|(p, q, _)| (*p, *q) == key) {
                Some(i) => i,
                None => {
                    reads.push((key.0, key.1, o));
                    reads.len() - 1
                }
            };
            read_of.push(i);
        }

        let mut responses = Vec::with_capacity(reads.len());
        let result = async {
            for (path, query, first) in &reads {
                let value = self
                    .read(&ctx, &mut auth, first, path, *query, deadline)
                    .await?;
                responses.push(value);
            }
            objects
                .iter()
                .zip(&read_of)
                .map(|(o, &i)| {
                    let value = kv::extract(&responses[i], o, self.config.max_object_size)
                        .map_err(|e| extract_error(&ctx.spc, o, e))?;
                    Ok(FetchedObject {
                        path: o.path.clone(),
                        value,
                    })
                })
                .collect::<Result<Vec<_>, ProviderError>>()
        }
        .await;
        responses.into_iter().for_each(kv::zeroize_value);
        result
    }

    /// Reads one path, logging in first if needed, and once more if a cached login token is
    /// refused (403).
    async fn read(
        &self,
        ctx: &Ctx,
        auth: &mut AuthState,
        object: &ObjectSpec,
        path: &str,
        query: Option<&str>,
        deadline: Instant,
    ) -> Result<Value, ProviderError> {
        let url = api_url(&ctx.base, path, query);
        let read_error = |cause| ProviderError::Read {
            spc: ctx.spc.clone(),
            object: object.path.to_string(),
            path: path.to_owned(),
            address: ctx.address.clone(),
            cause: Box::new(cause),
        };
        tracing::debug!(spc = %ctx.spc, object = %object.path, path, "reading OpenBao secret");
        let token = self.token(ctx, auth, deadline).await?;
        let cause = match self.get(&url, &token, deadline).await {
            Ok(v) => return Ok(v),
            Err(ReadFailure::DeletedVersion) => return Err(deleted(ctx, object, path)),
            Err(ReadFailure::Cause(c)) => c,
        };
        let AuthState::Login { key, current } = auth else {
            return Err(read_error(cause));
        };
        // Only a token from the cache may have expired; a fresh one is refused for good.
        let from_cache = matches!(current, Some((_, false)));
        if cause.status() != Some(403) || !from_cache {
            return Err(read_error(cause));
        }
        tracing::info!(spc = %ctx.spc, path, "cached OpenBao token refused, logging in again");
        let token = self.cached_login(ctx, key, Some(&token), deadline).await?;
        *current = Some((token.clone(), true));
        match self.get(&url, &token, deadline).await {
            Ok(v) => Ok(v),
            Err(ReadFailure::DeletedVersion) => Err(deleted(ctx, object, path)),
            Err(ReadFailure::Cause(c)) => Err(read_error(c)),
        }
    }

    /// The token to read with.
    async fn token(
        &self,
        ctx: &Ctx,
        auth: &mut AuthState,
        deadline: Instant,
    ) -> Result<SecretString, ProviderError> {
        match auth {
            AuthState::Static(t) => Ok(t.clone()),
            AuthState::Login {
                current: Some((t, _)),
                ..
            } => Ok(t.clone()),
            AuthState::Login { key, current } => {
                let slot = self.tokens.slot(key);
                let mut guard = slot.lock().await;
                if let Some(cached) = guard.as_ref().filter(|c| c.is_fresh(Instant::now())) {
                    let t = cached.token.clone();
                    *current = Some((t.clone(), false));
                    return Ok(t);
                }
                let t = self.login_into(ctx, key, &mut guard, deadline).await?;
                *current = Some((t.clone(), true));
                Ok(t)
            }
        }
    }

    /// Logs in again unless another caller already replaced `failed`.
    async fn cached_login(
        &self,
        ctx: &Ctx,
        key: &LoginKey,
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
        self.login_into(ctx, key, &mut guard, deadline).await
    }

    async fn login_into(
        &self,
        ctx: &Ctx,
        key: &LoginKey,
        slot: &mut Option<CachedToken>,
        deadline: Instant,
    ) -> Result<SecretString, ProviderError> {
        *slot = None;
        let started = Instant::now();
        let (token, lease) = self.login(ctx, key, deadline).await?;
        *slot = Some(CachedToken::new(token.clone(), lease, started));
        Ok(token)
    }

    /// `POST /v1/auth/<mount>/login {"jwt", "role"}`: the token and its lease.
    async fn login(
        &self,
        ctx: &Ctx,
        key: &LoginKey,
        deadline: Instant,
    ) -> Result<(SecretString, Duration), ProviderError> {
        let login_error = |cause| ProviderError::Login {
            spc: ctx.spc.clone(),
            address: ctx.address.clone(),
            mount: key.mount.clone(),
            role: key.role.clone(),
            cause: Box::new(cause),
        };
        let url = api_url(&ctx.base, &format!("auth/{}/login", key.mount), None);
        let body = login_body(&key.jwt, &key.role);
        let (status, value) = self
            .request(Method::POST, &url, None, Some(body.as_slice()), deadline)
            .await
            .map_err(login_error)?;
        if !status.is_success() {
            return Err(login_error(status_cause(status, value)));
        }
        let (token, lease) = parse_login(value).map_err(login_error)?;
        tracing::info!(
            spc = %ctx.spc,
            mount = %key.mount,
            role = %key.role,
            lease_secs = lease.as_secs(),
            "logged in to OpenBao"
        );
        Ok((token, lease))
    }

    /// `GET` a secret: its parsed body on success.
    async fn get(
        &self,
        url: &Url,
        token: &SecretString,
        deadline: Instant,
    ) -> Result<Value, ReadFailure> {
        let (status, value) = self
            .request(Method::GET, url, Some(token), None, deadline)
            .await
            .map_err(ReadFailure::Cause)?;
        if status.is_success() {
            if let Some(w) = value.get("warnings").and_then(Value::as_array) {
                for w in w.iter().filter_map(Value::as_str) {
                    tracing::warn!(path = url.path(), warning = w, "OpenBao warning");
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
            let cause = match self.attempt(&method, url, token, body).await {
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
        method: &Method,
        url: &Url,
        token: Option<&SecretString>,
        body: Option<&[u8]>,
    ) -> Result<(StatusCode, Value), Cause> {
        let mut req = self.client.request(method.clone(), url.clone());
        if let Some(t) = token {
            let mut value = HeaderValue::from_str(t.expose()).map_err(|_| Cause::InvalidToken)?;
            value.set_sensitive(true);
            req = req.header(TOKEN_HEADER, value);
        }
        if let Some(b) = body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(b.to_vec());
        }
        let timeout = self.config.request_timeout;
        let mut resp = req.send().await.map_err(|e| transport_cause(&e, timeout))?;
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
}

/// Per-fetch context for error messages.
struct Ctx {
    spc: String,
    base: Url,
    /// `base` without a trailing slash, for messages and the token cache key.
    address: String,
}

/// How a fetch authenticates.
enum AuthState {
    /// A token given by the caller.
    Static(SecretString),
    /// A login token: the cache key, and the token in use in this fetch (with whether it came
    /// from a login made during this fetch).
    Login {
        key: LoginKey,
        current: Option<(SecretString, bool)>,
    },
}

enum ReadFailure {
    DeletedVersion,
    Cause(Cause),
}

fn deleted(ctx: &Ctx, object: &ObjectSpec, path: &str) -> ProviderError {
    ProviderError::DeletedVersion {
        spc: ctx.spc.clone(),
        object: object.path.to_string(),
        path: path.to_owned(),
    }
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

/// `auth.client_token` and `auth.lease_duration` of a login response; the rest is wiped.
fn parse_login(mut value: Value) -> Result<(SecretString, Duration), Cause> {
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
    let token = auth.remove("client_token");
    kv::zeroize_value(Value::Object(auth));
    match token {
        Some(Value::String(t)) if !t.is_empty() => {
            Ok((SecretString::new(t), Duration::from_secs(lease)))
        }
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
