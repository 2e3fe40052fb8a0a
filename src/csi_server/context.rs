//! The volume context of a NodePublishVolume request, typed.
//!
//! kubelet fills `volume_context` from the pod spec (`volumeAttributes`) and, with the
//! CSIDriver's `podInfoOnMount: true`, with the pod's identity. With `tokenRequests`, it adds
//! the pod's service-account tokens, keyed by audience, either in `volume_context` or (Kubernetes
//! ≥ 1.35 with `serviceAccountTokenInSecrets: true`) in the request's `secrets`; like upstream
//! v1.6.0 we read `secrets` first. The tokens live only in `SecretString`s; the raw JSON is
//! wiped after parsing, and no error message quotes any part of it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use zeroize::Zeroizing;

use crate::secret::SecretString;
use crate::volume::PodInfo;

/// `volumeAttributes.secretProviderClass` (pod spec): the SPC's name in the pod's namespace.
pub const SECRET_PROVIDER_CLASS: &str = "secretProviderClass";
/// Set by kubelet (`podInfoOnMount`).
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
/// Set by kubelet (`podInfoOnMount`).
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
/// Set by kubelet (`podInfoOnMount`).
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
/// Set by kubelet (`podInfoOnMount`).
pub const SERVICE_ACCOUNT_NAME: &str = "csi.storage.k8s.io/serviceAccount.name";
/// `"true"` for inline (ephemeral) volumes, set by kubelet.
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
/// Set by kubelet (`tokenRequests`): `{"<audience>": {"token": "…", "expirationTimestamp": "…"}}`.
pub const SERVICE_ACCOUNT_TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";
/// The token audience used when the SPC has no `audience` parameter (the OpenBao provider's).
pub const DEFAULT_AUDIENCE: &str = "openbao";

/// What is wrong with a volume context. Never quotes a token.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// `secretProviderClass` is absent or empty (upstream's message).
    #[error("secretProviderClass is not set")]
    MissingSecretProviderClass,
    /// `csi.storage.k8s.io/pod.namespace` is absent.
    #[error(
        "{POD_NAMESPACE} is not set in the volume context: the CSIDriver needs podInfoOnMount: true"
    )]
    MissingPodNamespace,
    /// The volume context is not a flat string map kubelet would send.
    #[error("invalid volume context: {0}")]
    Invalid(String),
    /// The tokens JSON does not parse. Only its shape is described, never its content.
    #[error("{SERVICE_ACCOUNT_TOKENS} in the request's {source_name} is not valid: {detail}")]
    InvalidTokens {
        /// `secrets` or `volume context`.
        source_name: &'static str,
        /// Category and position of the error.
        detail: String,
    },
    /// No token for the audience the SPC logs in with.
    #[error(
        "no service-account token for audience '{audience}' (SecretProviderClass {spc}): {}",
        no_token_hint(available)
    )]
    NoToken {
        /// The audience looked for.
        audience: String,
        /// `namespace/name` of the SPC.
        spc: String,
        /// Audiences that were present.
        available: Vec<String>,
    },
}

fn no_token_hint(available: &[String]) -> String {
    if available.is_empty() {
        format!(
            "the request has no {SERVICE_ACCOUNT_TOKENS}; the CSIDriver needs tokenRequests with \
             this audience (minting tokens through the Kubernetes API is not supported yet)"
        )
    } else {
        format!(
            "{SERVICE_ACCOUNT_TOKENS} has audiences [{}]; add this audience to the CSIDriver's \
             tokenRequests or set the SPC's 'audience' parameter",
            available.join(", ")
        )
    }
}

/// Where the tokens came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `NodePublishVolumeRequest.secrets` (Kubernetes ≥ 1.35, `serviceAccountTokenInSecrets`).
    Secrets,
    /// `volume_context`.
    VolumeContext,
    /// Neither had them.
    Absent,
}

/// The pod's service-account tokens by audience. `Debug` shows audiences only.
pub struct ServiceAccountTokens {
    by_audience: BTreeMap<String, SecretString>,
    source: TokenSource,
}

impl fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountTokens")
            .field("audiences", &self.by_audience.keys().collect::<Vec<_>>())
            .field("source", &self.source)
            .finish()
    }
}

impl ServiceAccountTokens {
    /// Where they came from.
    pub fn source(&self) -> TokenSource {
        self.source
    }

    /// The audiences present, sorted.
    pub fn audiences(&self) -> impl Iterator<Item = &str> {
        self.by_audience.keys().map(String::as_str)
    }

    /// The token for the SPC's `audience` (default [`DEFAULT_AUDIENCE`]). There is no fallback
    /// to "the only token": a token minted for another audience must not be sent to OpenBao.
    pub fn select(&self, audience: Option<&str>, spc: &str) -> Result<SecretString, ContextError> {
        let audience = audience.unwrap_or(DEFAULT_AUDIENCE);
        self.by_audience
            .get(audience)
            .cloned()
            .ok_or_else(|| ContextError::NoToken {
                audience: audience.to_owned(),
                spc: spc.to_owned(),
                available: self.by_audience.keys().cloned().collect(),
            })
    }
}

/// The typed volume context.
#[derive(Debug)]
pub struct VolumeContext {
    /// The SPC's name (looked up in the pod's namespace).
    pub secret_provider_class: String,
    /// The pod (namespace always set).
    pub pod: PodInfo,
    /// `csi.storage.k8s.io/ephemeral == "true"`.
    pub ephemeral: bool,
    /// Service-account tokens.
    pub tokens: ServiceAccountTokens,
}

impl VolumeContext {
    /// The pod's namespace (checked present by `parse`).
    pub fn namespace(&self) -> &str {
        self.pod.namespace.as_deref().unwrap_or_default()
    }
}

/// The plain-string attributes, deserialized from the map (unknown keys, such as
/// `providerName`, are ignored; absent ones are empty).
#[derive(Default, Deserialize)]
#[serde(default)]
struct Attributes {
    /// Pod spec `volumeAttributes.secretProviderClass`.
    #[serde(rename = "secretProviderClass")]
    secret_provider_class: String,
    /// kubelet, `podInfoOnMount`.
    #[serde(rename = "csi.storage.k8s.io/pod.name")]
    pod_name: String,
    /// kubelet, `podInfoOnMount`.
    #[serde(rename = "csi.storage.k8s.io/pod.namespace")]
    pod_namespace: String,
    /// kubelet, `podInfoOnMount`.
    #[serde(rename = "csi.storage.k8s.io/pod.uid")]
    pod_uid: String,
    /// kubelet, `podInfoOnMount`.
    #[serde(rename = "csi.storage.k8s.io/serviceAccount.name")]
    service_account_name: String,
    /// kubelet, inline volumes.
    #[serde(rename = "csi.storage.k8s.io/ephemeral")]
    ephemeral: String,
}

/// One entry of the tokens JSON.
#[derive(Deserialize)]
struct RawToken {
    token: TokenString,
}

/// A token deserialized straight into a `SecretString`.
struct TokenString(SecretString);

impl<'de> Deserialize<'de> for TokenString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| TokenString(SecretString::new(s)))
    }
}

/// Parses the tokens JSON. Errors say what kind of error and where, never quote the input.
fn parse_tokens(
    json: &str,
    source_name: &'static str,
) -> Result<BTreeMap<String, SecretString>, ContextError> {
    let raw: BTreeMap<String, RawToken> = serde_json::from_str(json).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => {
                "unexpected shape (expected {\"<audience>\": {\"token\": \"…\"}})"
            }
            serde_json::error::Category::Eof => "truncated JSON",
        };
        ContextError::InvalidTokens {
            source_name,
            detail: format!("{kind} at line {} column {}", e.line(), e.column()),
        }
    })?;
    Ok(raw.into_iter().map(|(aud, t)| (aud, t.token.0)).collect())
}

/// Parses `volume_context` and the tokens from `secrets` (first) or `volume_context`. Both
/// maps are consumed; every value that may hold a credential is wiped before it is dropped.
pub fn parse(
    mut volume_context: HashMap<String, String>,
    mut secrets: HashMap<String, String>,
) -> Result<VolumeContext, ContextError> {
    let from_secrets = secrets.remove(SERVICE_ACCOUNT_TOKENS).map(Zeroizing::new);
    let from_context = volume_context
        .remove(SERVICE_ACCOUNT_TOKENS)
        .map(Zeroizing::new);
    for (_, v) in secrets.drain() {
        drop(Zeroizing::new(v));
    }
    let tokens = match (&from_secrets, &from_context) {
        (Some(json), _) => ServiceAccountTokens {
            by_audience: parse_tokens(json, "secrets")?,
            source: TokenSource::Secrets,
        },
        (None, Some(json)) => ServiceAccountTokens {
            by_audience: parse_tokens(json, "volume context")?,
            source: TokenSource::VolumeContext,
        },
        (None, None) => ServiceAccountTokens {
            by_audience: BTreeMap::new(),
            source: TokenSource::Absent,
        },
    };

    let attrs = Attributes::deserialize(volume_context.into_deserializer())
        .map_err(|e: serde::de::value::Error| ContextError::Invalid(e.to_string()))?;
    let non_empty = |v: String| Some(v).filter(|s| !s.is_empty());
    let secret_provider_class =
        non_empty(attrs.secret_provider_class).ok_or(ContextError::MissingSecretProviderClass)?;
    let namespace = non_empty(attrs.pod_namespace).ok_or(ContextError::MissingPodNamespace)?;
    Ok(VolumeContext {
        secret_provider_class,
        pod: PodInfo {
            name: non_empty(attrs.pod_name),
            namespace: Some(namespace),
            uid: non_empty(attrs.pod_uid),
            service_account: non_empty(attrs.service_account_name),
        },
        ephemeral: attrs.ephemeral.eq_ignore_ascii_case("true"),
        tokens,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kubelet_context(tokens: Option<&str>) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [
            (SECRET_PROVIDER_CLASS, "harbor-secrets"),
            (POD_NAME, "harbor-core-0"),
            (POD_NAMESPACE, "harbor"),
            (POD_UID, "0b9a2d6e"),
            (SERVICE_ACCOUNT_NAME, "harbor"),
            (EPHEMERAL, "true"),
            ("providerName", "openbao"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if let Some(t) = tokens {
            m.insert(SERVICE_ACCOUNT_TOKENS.to_owned(), t.to_owned());
        }
        m
    }

    const TOKENS: &str = r#"{"openbao":{"token":"JWT-OPENBAO","expirationTimestamp":"2030-01-01T00:00:00Z"},"other":{"token":"JWT-OTHER","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#;

    #[test]
    fn parses_kubelet_ephemeral_context() {
        let c = parse(kubelet_context(Some(TOKENS)), HashMap::new()).unwrap();
        assert_eq!(c.secret_provider_class, "harbor-secrets");
        assert_eq!(c.namespace(), "harbor");
        assert_eq!(c.pod.name.as_deref(), Some("harbor-core-0"));
        assert_eq!(c.pod.uid.as_deref(), Some("0b9a2d6e"));
        assert_eq!(c.pod.service_account.as_deref(), Some("harbor"));
        assert!(c.ephemeral);
        assert_eq!(c.tokens.source(), TokenSource::VolumeContext);
        assert_eq!(
            c.tokens.audiences().collect::<Vec<_>>(),
            ["openbao", "other"]
        );
        assert_eq!(
            c.tokens.select(None, "harbor/x").unwrap().expose(),
            "JWT-OPENBAO"
        );
        assert_eq!(
            c.tokens.select(Some("other"), "harbor/x").unwrap().expose(),
            "JWT-OTHER"
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("JWT-"), "{dbg}");
    }

    #[test]
    fn secrets_win_over_volume_context() {
        let secrets: HashMap<String, String> = [(
            SERVICE_ACCOUNT_TOKENS.to_owned(),
            r#"{"openbao":{"token":"FROM-SECRETS"}}"#.to_owned(),
        )]
        .into();
        let c = parse(kubelet_context(Some(TOKENS)), secrets).unwrap();
        assert_eq!(c.tokens.source(), TokenSource::Secrets);
        assert_eq!(c.tokens.select(None, "s").unwrap().expose(), "FROM-SECRETS");
    }

    #[test]
    fn no_token_for_the_audience_names_it_and_not_the_others_values() {
        let c = parse(kubelet_context(Some(TOKENS)), HashMap::new()).unwrap();
        let e = c
            .tokens
            .select(Some("vault"), "harbor/harbor-secrets")
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("'vault'") && msg.contains("harbor/harbor-secrets"),
            "{msg}"
        );
        assert!(
            msg.contains("[openbao, other]") && !msg.contains("JWT-"),
            "{msg}"
        );
        let c = parse(kubelet_context(None), HashMap::new()).unwrap();
        let msg = c.tokens.select(None, "a/b").unwrap_err().to_string();
        assert!(
            msg.contains("'openbao'") && msg.contains("tokenRequests"),
            "{msg}"
        );
    }

    #[test]
    fn invalid_tokens_json_never_quotes_it() {
        for bad in [
            r#"{"openbao": "JWT-SECRET-VALUE"}"#,
            r#"{"openbao": {"token": 5}}"#,
            r#"JWT-SECRET-VALUE"#,
            r#"{"openbao": {"token": "JWT-SECRET-VALUE""#,
        ] {
            let e = parse(kubelet_context(Some(bad)), HashMap::new()).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, ContextError::InvalidTokens { .. }), "{msg}");
            assert!(!msg.contains("JWT-SECRET"), "{msg}");
        }
    }

    #[test]
    fn required_attributes() {
        let mut m = kubelet_context(None);
        m.remove(SECRET_PROVIDER_CLASS);
        assert!(matches!(
            parse(m, HashMap::new()),
            Err(ContextError::MissingSecretProviderClass)
        ));
        let mut m = kubelet_context(None);
        m.insert(SECRET_PROVIDER_CLASS.into(), String::new());
        assert_eq!(
            parse(m, HashMap::new()).unwrap_err().to_string(),
            "secretProviderClass is not set"
        );
        let mut m = kubelet_context(None);
        m.remove(POD_NAMESPACE);
        assert!(matches!(
            parse(m, HashMap::new()),
            Err(ContextError::MissingPodNamespace)
        ));
    }
}
