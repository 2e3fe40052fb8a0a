//! Prometheus metrics: the upstream Secrets Store CSI Driver names (so existing dashboards and
//! alerts keep working) plus baofs's own, served as text on `--metrics-addr` (`GET /metrics`).
//!
//! ```text
//! csi node (publish/unpublish) ─┐
//! poller/observer (rotation)  ──┼─> Metrics (prometheus-client registry) ─> GET /metrics
//! syncer (Secrets), provider  ──┘
//! ```
//!
//! Labels carry only bounded, non-secret values: `os_type`, the SPC's `provider` (`openbao` or
//! `vault`), `rotated`, and reason strings (`error_type`, `outcome`) that are `&'static str`
//! constants. Never a name, a path, a value or a token. Counters get the `_total` suffix in the
//! exposition, as upstream's exporter does. No kube, no tonic here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::observer::{CallObserver, PublishReport, VolumeEvent, VolumeObserver, VolumeView};
use crate::provider::{BoxFuture, FetchedObject, Provider, ProviderError};
use crate::volume::VolumeSpec;

/// `os_type` of every upstream metric.
pub const OS_TYPE: &str = "linux";

/// Labels `os_type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Os {
    os_type: &'static str,
}

/// Labels `os_type`, `provider`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OsProvider {
    os_type: &'static str,
    provider: &'static str,
}

/// Labels `os_type`, `provider`, `error_type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishErrorLabels {
    os_type: &'static str,
    provider: &'static str,
    error_type: &'static str,
}

/// Labels `os_type`, `rotated`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rotated {
    os_type: &'static str,
    rotated: &'static str,
}

/// Labels `os_type`, `rotated`, `error_type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationError {
    os_type: &'static str,
    rotated: &'static str,
    error_type: &'static str,
}

/// Labels `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

/// Labels `kind`, `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindOutcome {
    kind: &'static str,
    outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Upstream's buckets: 0.1 s doubling 11 times (to about 100 s).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 11))
}

/// Finer buckets for baofs's own latencies: 1 ms doubling 16 times (to about 33 s).
fn fine_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The provider label value: the SPC's `spec.provider` (validated to one of these), else
/// `unknown` (the SPC could not be read).
pub fn provider_label(provider: Option<&str>) -> &'static str {
    match provider {
        Some("openbao") => "openbao",
        Some("vault") => "vault",
        _ => "unknown",
    }
}

/// Every metric baofs records.
pub struct Metrics {
    registry: Registry,
    node_publish: Family<OsProvider, Counter>,
    node_unpublish: Family<Os, Counter>,
    node_publish_error: Family<PublishErrorLabels, Counter>,
    node_unpublish_error: Family<Os, Counter>,
    sync_k8s_secret: Family<OsProvider, Counter>,
    sync_k8s_secret_duration: Histograms<Os>,
    rotation_reconcile: Family<Rotated, Counter>,
    rotation_reconcile_error: Family<RotationError, Counter>,
    rotation_reconcile_duration: Histograms<Os>,
    openbao_requests: Family<KindOutcome, Counter>,
    openbao_fetches: Family<KindOutcome, Counter>,
    openbao_fetch_duration: Histograms<Kind>,
    k8s_writes: Family<KindOutcome, Counter>,
    volumes: Gauge,
    cached_bytes: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let node_publish = Family::<OsProvider, Counter>::default();
        let node_unpublish = Family::<Os, Counter>::default();
        let node_publish_error = Family::<PublishErrorLabels, Counter>::default();
        let node_unpublish_error = Family::<Os, Counter>::default();
        let sync_k8s_secret = Family::<OsProvider, Counter>::default();
        let sync_k8s_secret_duration: Histograms<Os> =
            Family::new_with_constructor(duration_histogram);
        let rotation_reconcile = Family::<Rotated, Counter>::default();
        let rotation_reconcile_error = Family::<RotationError, Counter>::default();
        let rotation_reconcile_duration: Histograms<Os> =
            Family::new_with_constructor(duration_histogram);
        let openbao_requests = Family::<KindOutcome, Counter>::default();
        let openbao_fetches = Family::<KindOutcome, Counter>::default();
        let openbao_fetch_duration: Histograms<Kind> = Family::new_with_constructor(fine_histogram);
        let k8s_writes = Family::<KindOutcome, Counter>::default();
        let volumes = Gauge::default();
        let cached_bytes = Gauge::default();

        registry.register(
            "node_publish",
            "Successful NodePublishVolume calls (republishes included)",
            node_publish.clone(),
        );
        registry.register(
            "node_unpublish",
            "Successful NodeUnpublishVolume calls",
            node_unpublish.clone(),
        );
        registry.register(
            "node_publish_error",
            "Failed NodePublishVolume calls, by error_type",
            node_publish_error.clone(),
        );
        registry.register(
            "node_unpublish_error",
            "Failed NodeUnpublishVolume calls",
            node_unpublish_error.clone(),
        );
        registry.register(
            "sync_k8s_secret",
            "Kubernetes Secrets written from secretObjects (created or changed)",
            sync_k8s_secret.clone(),
        );
        registry.register(
            "sync_k8s_secret_duration_sec",
            "Time to sync one volume's secretObjects to Kubernetes Secrets, in seconds",
            sync_k8s_secret_duration.clone(),
        );
        registry.register(
            "rotation_reconcile",
            "Rotation polls of a volume, by whether something changed",
            rotation_reconcile.clone(),
        );
        registry.register(
            "rotation_reconcile_error",
            "Failed rotation polls or failed post-rotation updates, by error_type",
            rotation_reconcile_error.clone(),
        );
        registry.register(
            "rotation_reconcile_duration_sec",
            "Time of one rotation poll (fetch, swap, invalidation, sync), in seconds",
            rotation_reconcile_duration.clone(),
        );
        registry.register(
            "baofs_openbao_requests",
            "HTTP requests to OpenBao (each attempt), by kind (login, renew, revoke, read, write) and outcome (2xx, 4xx, 5xx, error)",
            openbao_requests.clone(),
        );
        registry.register(
            "baofs_openbao_fetches",
            "Fetches of a whole volume from OpenBao (publish or poll), by kind and outcome",
            openbao_fetches.clone(),
        );
        registry.register(
            "baofs_openbao_fetch_duration_sec",
            "Time to fetch a whole volume from OpenBao (logins included), in seconds",
            openbao_fetch_duration.clone(),
        );
        registry.register(
            "baofs_k8s_writes",
            "Writes to the Kubernetes API (secret, secret_owner, pod_status, event) by outcome",
            k8s_writes.clone(),
        );
        registry.register("baofs_volumes", "Volumes served", volumes.clone());
        registry.register(
            "baofs_cached_bytes",
            "Bytes of secret values held in memory for the served volumes",
            cached_bytes.clone(),
        );
        Self {
            registry,
            node_publish,
            node_unpublish,
            node_publish_error,
            node_unpublish_error,
            sync_k8s_secret,
            sync_k8s_secret_duration,
            rotation_reconcile,
            rotation_reconcile_error,
            rotation_reconcile_duration,
            openbao_requests,
            openbao_fetches,
            openbao_fetch_duration,
            k8s_writes,
            volumes,
            cached_bytes,
        }
    }

    /// A NodePublishVolume succeeded.
    pub fn node_publish(&self, provider: &'static str) {
        self.node_publish
            .get_or_create(&OsProvider {
                os_type: OS_TYPE,
                provider,
            })
            .inc();
    }

    /// A NodePublishVolume failed with `error_type`.
    pub fn node_publish_error(&self, provider: &'static str, error_type: &'static str) {
        self.node_publish_error
            .get_or_create(&PublishErrorLabels {
                os_type: OS_TYPE,
                provider,
                error_type,
            })
            .inc();
    }

    /// Counts a NodePublishVolume call.
    pub fn publish_done(&self, report: &PublishReport<'_>) {
        let provider = provider_label(report.provider);
        match report.error {
            None => self.node_publish(provider),
            Some(e) => self.node_publish_error(provider, e.error_type),
        }
    }

    /// A NodeUnpublishVolume succeeded (`ok`) or failed.
    pub fn node_unpublish(&self, ok: bool) {
        let labels = Os { os_type: OS_TYPE };
        if ok {
            self.node_unpublish.get_or_create(&labels).inc();
        } else {
            self.node_unpublish_error.get_or_create(&labels).inc();
        }
    }

    /// `written` Secrets were created or changed for one volume, taking `elapsed`.
    pub fn secret_sync(&self, provider: &'static str, written: u64, elapsed: Duration) {
        if written > 0 {
            self.sync_k8s_secret
                .get_or_create(&OsProvider {
                    os_type: OS_TYPE,
                    provider,
                })
                .inc_by(written);
        }
        self.sync_k8s_secret_duration
            .get_or_create(&Os { os_type: OS_TYPE })
            .observe(elapsed.as_secs_f64());
    }

    /// One rotation poll ended: `rotated` says whether something changed; `error_type` is set
    /// when the poll or the updates after it failed.
    pub fn rotation(&self, rotated: bool, error_type: Option<&'static str>, elapsed: Duration) {
        let rotated = if rotated { "true" } else { "false" };
        self.rotation_reconcile
            .get_or_create(&Rotated {
                os_type: OS_TYPE,
                rotated,
            })
            .inc();
        if let Some(error_type) = error_type {
            self.rotation_reconcile_error
                .get_or_create(&RotationError {
                    os_type: OS_TYPE,
                    rotated,
                    error_type,
                })
                .inc();
        }
        self.rotation_reconcile_duration
            .get_or_create(&Os { os_type: OS_TYPE })
            .observe(elapsed.as_secs_f64());
    }

    /// A whole-volume fetch from OpenBao ended with `outcome` (`ok` or a provider reason).
    pub fn openbao_fetch(&self, kind: &'static str, outcome: &'static str, elapsed: Duration) {
        let labels = KindOutcome { kind, outcome };
        self.openbao_fetches.get_or_create(&labels).inc();
        self.openbao_fetch_duration
            .get_or_create(&Kind { kind })
            .observe(elapsed.as_secs_f64());
    }

    /// One HTTP request to OpenBao: `status` is `None` when no response came.
    pub fn openbao_request(&self, method: &str, path: &str, status: Option<u16>) {
        let kind = if path.contains("/auth/") && path.ends_with("/login") {
            "login"
        } else if path.ends_with("/renew") || path.ends_with("/renew-self") {
            "renew"
        } else if path.ends_with("/revoke") || path.ends_with("/revoke-self") {
            "revoke"
        } else if method.eq_ignore_ascii_case("GET") {
            "read"
        } else {
            "write"
        };
        let outcome = match status {
            Some(200..=299) => "2xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "other",
            None => "error",
        };
        self.openbao_requests
            .get_or_create(&KindOutcome { kind, outcome })
            .inc();
    }

    /// Makes `self` the process's metrics for [`record_openbao_request`] (first call wins).
    pub fn install_global(self: &Arc<Self>) {
        let _ = GLOBAL.set(Arc::clone(self));
    }

    /// A write to the Kubernetes API (`kind`: secret, secret_owner, pod_status, event).
    pub fn k8s_write(&self, kind: &'static str, outcome: &'static str) {
        self.k8s_writes
            .get_or_create(&KindOutcome { kind, outcome })
            .inc();
    }

    /// Sets the gauges of what is served.
    pub fn set_served(&self, volumes: usize, bytes: usize) {
        self.volumes.set(i64::try_from(volumes).unwrap_or(i64::MAX));
        self.cached_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The text exposition (OpenMetrics text, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

static GLOBAL: std::sync::OnceLock<Arc<Metrics>> = std::sync::OnceLock::new();

/// Counts one HTTP request to OpenBao in the process's metrics (a no-op until
/// [`Metrics::install_global`]; `baofs mount` never installs any). The path only picks the
/// `kind` label; it is never recorded.
pub fn record_openbao_request(method: &str, path: &str, status: Option<u16>) {
    if let Some(m) = GLOBAL.get() {
        m.openbao_request(method, path, status);
    }
}

/// Records fetch counts and durations of another provider. Every fetch is a publish or a poll;
/// `kind` tells which from whether the volume was fetched before.
pub struct MeteredProvider {
    inner: Arc<dyn Provider>,
    metrics: Arc<Metrics>,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for MeteredProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredProvider").finish_non_exhaustive()
    }
}

impl MeteredProvider {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Provider>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            metrics,
            seen: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    fn kind(&self, spec: &VolumeSpec) -> &'static str {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&spec.id) {
            "poll"
        } else {
            "publish"
        }
    }
}

impl Provider for MeteredProvider {
    fn fetch<'a>(
        &'a self,
        spec: &'a VolumeSpec,
    ) -> BoxFuture<'a, Result<Vec<FetchedObject>, ProviderError>> {
        Box::pin(async move {
            let kind = self.kind(spec);
            let started = std::time::Instant::now();
            let result = self.inner.fetch(spec).await;
            let outcome = match &result {
                Ok(_) => {
                    self.seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(spec.id.clone());
                    "ok"
                }
                Err(e) => e.reason(),
            };
            self.metrics.openbao_fetch(kind, outcome, started.elapsed());
            result
        })
    }

    fn release<'a>(&'a self, spec: &'a VolumeSpec) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&spec.id);
            self.inner.release(spec).await;
        })
    }
}

/// Records rotation metrics without Kubernetes (`--spc-dir`): the Kubernetes observer records
/// them itself, with its sync time included.
#[derive(Debug, Clone)]
pub struct MetricsObserver {
    metrics: Arc<Metrics>,
}

impl MetricsObserver {
    /// An observer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl VolumeObserver for MetricsObserver {
    fn observe<'a>(&'a self, _view: &'a VolumeView, event: VolumeEvent<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match event {
                VolumeEvent::Rotated { elapsed, .. } => {
                    self.metrics.rotation(true, None, elapsed);
                }
                VolumeEvent::Unchanged { elapsed } => {
                    self.metrics.rotation(false, None, elapsed);
                }
                VolumeEvent::RotationFailed { elapsed, .. } => {
                    self.metrics
                        .rotation(false, Some(FAILED_TO_ROTATE), elapsed);
                }
                VolumeEvent::Published | VolumeEvent::Unpublished | VolumeEvent::Restored => {}
            }
        })
    }
}

impl CallObserver for MetricsObserver {
    fn publish_done<'a>(&'a self, report: PublishReport<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.metrics.publish_done(&report) })
    }
    fn unpublish_done(&self, ok: bool) {
        self.metrics.node_unpublish(ok);
    }
}

/// `error_type` of a failed rotation poll (upstream's).
pub const FAILED_TO_ROTATE: &str = "FailedToRotate";

/// Why the metrics endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `--metrics-addr` is not `host:port` or `:port`.
    #[error("invalid --metrics-addr '{addr}': {reason}")]
    Addr {
        /// What was given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Binding failed.
    #[error("--metrics-addr {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Resolves `--metrics-addr`: `:8095` (every interface, as upstream), `127.0.0.1:8095`,
/// `[::1]:8095`, `localhost:8095`.
pub async fn resolve_addr(addr: &str) -> Result<SocketAddr, MetricsError> {
    let err = |reason: String| MetricsError::Addr {
        addr: addr.to_owned(),
        reason,
    };
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_owned()
    };
    if let Ok(a) = full.parse::<SocketAddr>() {
        return Ok(a);
    }
    let mut found = tokio::net::lookup_host(&full)
        .await
        .map_err(|e| err(e.to_string()))?;
    found
        .next()
        .ok_or_else(|| err("resolves to no address".to_owned()))
}

/// What a scrape reads besides the registry (the gauges of what is served).
pub type ScrapeHook = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// The largest request head read from a client.
const MAX_REQUEST: usize = 8192;

/// Serves `GET /metrics` on `addr` until the task is aborted.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    on_scrape: ScrapeHook,
) -> Result<(SocketAddr, JoinHandle<()>), MetricsError> {
    let sock = resolve_addr(addr).await?;
    let listener = TcpListener::bind(sock)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    let local = listener.local_addr().unwrap_or(sock);
    info!(addr = %local, "serving metrics at /metrics");
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = Arc::clone(&metrics);
            let on_scrape = Arc::clone(&on_scrape);
            tokio::spawn(async move {
                let handled = tokio::time::timeout(
                    Duration::from_secs(10),
                    handle(stream, &metrics, &on_scrape),
                )
                .await;
                if !matches!(handled, Ok(Ok(()))) {
                    debug!(%peer, "metrics: connection dropped");
                }
            });
        }
    });
    Ok((local, task))
}

async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    on_scrape: &ScrapeHook,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "", "").await;
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            on_scrape(metrics);
            let body = metrics.encode();
            respond(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await
        }
        ("GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn upstream_names_with_total_suffix() {
        let m = Metrics::new();
        m.node_publish("openbao");
        m.node_publish_error("openbao", "SecretProviderClassNotFound");
        m.node_unpublish(true);
        m.node_unpublish(false);
        m.secret_sync("openbao", 2, Duration::from_millis(5));
        m.rotation(true, None, Duration::from_millis(5));
        m.rotation(false, Some(FAILED_TO_ROTATE), Duration::from_millis(5));
        m.openbao_fetch("poll", "ok", Duration::from_millis(1));
        m.openbao_request("POST", "/v1/auth/kubernetes/login", Some(200));
        m.openbao_request("GET", "/v1/secret/data/app", Some(403));
        m.openbao_request("GET", "/v1/secret/data/app", None);
        m.k8s_write("secret", "ok");
        m.set_served(3, 1024);
        let text = m.encode();
        for line in [
            "node_publish_total{os_type=\"linux\",provider=\"openbao\"} 1",
            "node_publish_error_total{os_type=\"linux\",provider=\"openbao\",error_type=\"SecretProviderClassNotFound\"} 1",
            "node_unpublish_total{os_type=\"linux\"} 1",
            "node_unpublish_error_total{os_type=\"linux\"} 1",
            "sync_k8s_secret_total{os_type=\"linux\",provider=\"openbao\"} 2",
            "sync_k8s_secret_duration_sec_count{os_type=\"linux\"} 1",
            "rotation_reconcile_total{os_type=\"linux\",rotated=\"true\"} 1",
            "rotation_reconcile_error_total{os_type=\"linux\",rotated=\"false\",error_type=\"FailedToRotate\"} 1",
            "rotation_reconcile_duration_sec_count{os_type=\"linux\"} 2",
            "baofs_openbao_fetches_total{kind=\"poll\",outcome=\"ok\"} 1",
            "baofs_k8s_writes_total{kind=\"secret\",outcome=\"ok\"} 1",
            "baofs_openbao_requests_total{kind=\"login\",outcome=\"2xx\"} 1",
            "baofs_openbao_requests_total{kind=\"read\",outcome=\"4xx\"} 1",
            "baofs_openbao_requests_total{kind=\"read\",outcome=\"error\"} 1",
            "baofs_volumes 3",
            "baofs_cached_bytes 1024",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[tokio::test]
    async fn resolves_upstream_style_addresses() {
        assert_eq!(
            resolve_addr(":8095").await.unwrap(),
            "0.0.0.0:8095".parse().unwrap()
        );
        assert_eq!(
            resolve_addr("127.0.0.1:9").await.unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(resolve_addr("nope").await.is_err());
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let m = Arc::new(Metrics::new());
        m.node_publish("vault");
        let hook: ScrapeHook = Arc::new(|m: &Metrics| m.set_served(7, 0));
        let (addr, task) = serve("127.0.0.1:0", Arc::clone(&m), hook).await.unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.contains("baofs_volumes 7"), "{out}");
        assert!(out.contains("node_publish_total{os_type=\"linux\",provider=\"vault\"} 1"));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        task.abort();
    }
}
