//! Token freshness: the poller logs in with the newest token kubelet gave (on publish and on
//! every republish). When that token has expired (kubelet stopped republishing, e.g. without
//! `requiresRepublish`), this provider wrapper asks the API server for a new pod-bound token
//! of the pod's service account (TokenRequest: the SPC's audience, bound to the Pod, 10
//! minutes) and logs in with it instead. RBAC: `create` on `serviceaccounts/token`. If the
//! request fails the old token is used, the login fails, and the poll failure becomes a
//! MountRotationFailed event. A token is never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::csi_server::context::DEFAULT_AUDIENCE;
use crate::provider::{BoxFuture, FetchedObject, Provider, ProviderError};
use crate::secret::SecretString;
use crate::volume::{Credentials, VolumeSpec};

/// A token this close to its expiry counts as expired.
const MARGIN: Duration = Duration::from_secs(30);
/// Lifetime asked for a self-minted token (upstream's provider asks 15 minutes).
const TOKEN_SECONDS: i64 = 600;

/// `exp` of a JWT (seconds since the epoch), without verifying it.
pub fn jwt_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?);
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<u64>,
    }
    serde_json::from_slice::<Claims>(&bytes).ok()?.exp
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn expired(exp: Option<u64>) -> bool {
    exp.is_some_and(|exp| exp <= now() + MARGIN.as_secs())
}

/// Replaces an expired pod token by a fresh one from TokenRequest before fetching.
pub struct TokenRefresher {
    inner: Arc<dyn Provider>,
    client: kube::Client,
    minted: Mutex<HashMap<String, (SecretString, Option<u64>)>>,
}

impl std::fmt::Debug for TokenRefresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRefresher").finish_non_exhaustive()
    }
}

impl TokenRefresher {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Provider>, client: kube::Client) -> Self {
        Self {
            inner,
            client,
            minted: Mutex::new(HashMap::new()),
        }
    }

    async fn mint(&self, spec: &VolumeSpec) -> Option<SecretString> {
        let pod = &spec.pod;
        let (ns, name, uid, sa) = (
            pod.namespace.as_deref()?,
            pod.name.as_deref()?,
            pod.uid.as_deref()?,
            pod.service_account.as_deref()?,
        );
        let audience = spec
            .spc
            .params
            .audience
            .clone()
            .unwrap_or_else(|| DEFAULT_AUDIENCE.to_owned());
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience]),
                expiration_seconds: Some(TOKEN_SECONDS),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Pod".to_owned()),
                    name: Some(name.to_owned()),
                    uid: Some(uid.to_owned()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        match api
            .create_token_request(sa, &PostParams::default(), &request)
            .await
        {
            Ok(tr) => {
                let token = tr.status.and_then(|s| s.token)?;
                info!(volume = %spec.id, namespace = ns, pod = name, service_account = sa,
                      "the pod's token expired; logging in with a TokenRequest token");
                Some(SecretString::new(token))
            }
            Err(e) => {
                warn!(volume = %spec.id, namespace = ns, pod = name, service_account = sa,
                      error = %e, "the pod's token expired and TokenRequest failed");
                None
            }
        }
    }

    /// The credentials to fetch with: kubelet's token while it is valid, else a minted one.
    async fn fresh(&self, spec: &VolumeSpec) -> Option<SecretString> {
        let Credentials::Jwt(token) = &spec.credentials else {
            return None;
        };
        if !expired(jwt_expiry(token.expose())) {
            return None;
        }
        if let Some((t, exp)) = self
            .minted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&spec.id)
            .cloned()
            && !expired(exp)
        {
            return Some(t);
        }
        let minted = self.mint(spec).await?;
        let exp = jwt_expiry(minted.expose());
        self.minted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.id.clone(), (minted.clone(), exp));
        Some(minted)
    }
}

impl Provider for TokenRefresher {
    fn fetch<'a>(
        &'a self,
        spec: &'a VolumeSpec,
    ) -> BoxFuture<'a, Result<Vec<FetchedObject>, ProviderError>> {
        Box::pin(async move {
            match self.fresh(spec).await {
                Some(token) => {
                    let fresh = VolumeSpec {
                        credentials: Credentials::Jwt(token),
                        ..spec.clone()
                    };
                    self.inner.fetch(&fresh).await
                }
                None => self.inner.fetch(spec).await,
            }
        })
    }

    fn release<'a>(&'a self, spec: &'a VolumeSpec) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.minted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&spec.id);
            self.inner.release(spec).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn expiry_is_read_without_verification() {
        assert_eq!(jwt_expiry(&jwt(r#"{"exp":42,"sub":"x"}"#)), Some(42));
        assert_eq!(jwt_expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(jwt_expiry("not a jwt"), None);
        assert!(expired(Some(42)));
        assert!(!expired(Some(now() + 3600)));
        assert!(!expired(None));
    }
}
