//! The Kubernetes side: API client, the SecretProviderClass and SecretProviderClassPodStatus
//! types, the SPC source (a watch-backed store), pod status, events, and the observer that ties
//! them to volume events. kube and k8s-openapi stay here, in `syncer` and in `csi_app`.
//!
//! ```text
//! NodePublishVolume ─> KubeSpcSource (reflector store, GET on miss) ─> SecretProviderClass
//! publisher/poller ─> KubeObserver ─┬─> syncer (secretObjects ─> Secrets, server-side apply)
//!                                   ├─> PodStatusWriter (SecretProviderClassPodStatus, on change)
//!                                   ├─> EventRecorder (events on the Pod)
//!                                   └─> Metrics
//! poller ─> TokenRefresher (expired pod token ─> TokenRequest) ─> provider
//! ```
//!
//! Every write uses server-side apply with the field manager [`FIELD_MANAGER`], and only when
//! what would be written differs from what this process last wrote. Nothing here logs, formats
//! or counts a secret value or a token.

pub mod crd;
pub mod events;
pub mod observer;
pub mod pod_status;
pub mod spc_store;
pub mod token;

use std::path::{Path, PathBuf};

pub use observer::KubeObserver;
pub use spc_store::KubeSpcSource;

/// Field manager of every write (server-side apply and patches).
pub const FIELD_MANAGER: &str = "baofs";
/// Label of every synced Secret (upstream's; its informers filter on it).
pub const MANAGED_LABEL: &str = "secrets-store.csi.k8s.io/managed";
/// Label of every SecretProviderClassPodStatus: the node that mounted it (upstream's).
pub const NODE_LABEL: &str = "internal.secrets-store.csi.k8s.io/node-name";
/// `reportingController` of events.
pub const EVENT_CONTROLLER: &str = "baofs";

/// Why talking to the Kubernetes API failed. Messages name objects, never values or tokens.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// No usable client configuration.
    #[error("Kubernetes client configuration ({source_name}): {detail}")]
    Config {
        /// `--kubeconfig FILE` or `in-cluster`.
        source_name: String,
        /// What is wrong.
        detail: String,
    },
    /// An API call failed.
    #[error("{action} {object}: {source}")]
    Api {
        /// What was attempted (`apply`, `get`, `patch owner references of`, ...).
        action: &'static str,
        /// `kind namespace/name`.
        object: String,
        /// The client's error (the API server's status message; never a request body).
        source: Box<kube::Error>,
    },
    /// The object exists and belongs to someone else.
    #[error(
        "{object} exists and is not managed by the driver (no label {MANAGED_LABEL}=true); refusing to overwrite it"
    )]
    Foreign {
        /// `Secret namespace/name`.
        object: String,
    },
    /// A secretObjects entry cannot be built from the volume's objects.
    #[error("{object}: {reason}")]
    Data {
        /// `Secret namespace/name`.
        object: String,
        /// Why (names keys and objects, never values).
        reason: String,
    },
}

impl K8sError {
    /// A stable reason for metric labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            K8sError::Config { .. } => "config",
            K8sError::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(s) if s.code == 403 => "forbidden",
                kube::Error::Api(s) if s.code == 404 => "not_found",
                kube::Error::Api(s) if s.code == 409 => "conflict",
                kube::Error::Api(s) if s.code == 422 => "invalid",
                kube::Error::Api(s) if s.code >= 500 => "server_error",
                kube::Error::Api(_) => "api_error",
                _ => "unreachable",
            },
            K8sError::Foreign { .. } => "foreign_secret",
            K8sError::Data { .. } => "invalid_data",
        }
    }

    pub(crate) fn api(action: &'static str, object: String, source: kube::Error) -> Self {
        K8sError::Api {
            action,
            object,
            source: Box::new(source),
        }
    }
}

/// Whether a kube error is the API server's 404.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Timeouts of API calls made on the publish and rotation paths: a slow or unreachable API
/// server delays a publish by at most about this much per write, never for kube's default of
/// five minutes (which only watches need).
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Two clients of one configuration: for watches (kube's long default timeouts) and for
/// calls (connect, read and write bounded by [`CALL_TIMEOUT`]).
#[derive(Clone)]
pub struct Clients {
    /// For watches.
    pub watch: kube::Client,
    /// For gets, applies, patches, events, token requests.
    pub call: kube::Client,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clients")
    }
}

/// Clients from `--kubeconfig FILE`, or the in-cluster configuration (service-account token
/// and CA of the pod, `KUBERNETES_SERVICE_HOST`/`_PORT`).
pub async fn clients(kubeconfig: Option<&Path>) -> Result<Clients, K8sError> {
    let (source_name, config) = config(kubeconfig).await?;
    let build = |config: kube::Config| {
        kube::Client::try_from(config).map_err(|e| K8sError::Config {
            source_name: source_name.clone(),
            detail: e.to_string(),
        })
    };
    let mut short = config.clone();
    short.connect_timeout = Some(CALL_TIMEOUT);
    short.read_timeout = Some(CALL_TIMEOUT);
    short.write_timeout = Some(CALL_TIMEOUT);
    Ok(Clients {
        watch: build(config)?,
        call: build(short)?,
    })
}

async fn config(kubeconfig: Option<&Path>) -> Result<(String, kube::Config), K8sError> {
    let (source_name, config) = match kubeconfig {
        Some(path) => {
            let source_name = format!("--kubeconfig {}", path.display());
            let err = |detail: String| K8sError::Config {
                source_name: source_name.clone(),
                detail,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| err(e.to_string()))?;
            (source_name, config)
        }
        None => {
            let config = kube::Config::incluster().map_err(|e| K8sError::Config {
                source_name: "in-cluster".to_owned(),
                detail: format!(
                    "{e} (outside a pod pass --kubeconfig FILE, or --spc-dir DIR to read SPCs from files without Kubernetes)"
                ),
            })?;
            ("in-cluster".to_owned(), config)
        }
    };
    Ok((source_name, config))
}

/// `kind namespace/name`, for messages.
pub(crate) fn object_name(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind} {namespace}/{name}")
}

/// The kubeconfig path the user gave, for logs.
pub fn describe_source(kubeconfig: Option<&PathBuf>) -> String {
    kubeconfig.map_or_else(
        || "in-cluster".to_owned(),
        |p| format!("kubeconfig {}", p.display()),
    )
}
