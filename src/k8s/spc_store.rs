//! SecretProviderClasses from the Kubernetes API: a reflector (list + watch of every SPC) keeps
//! an in-memory store, so a publish or a republish (every rotation interval with
//! `requiresRepublish`) costs no API call. A name the store does not have yet (an SPC created
//! a moment before the pod) is fetched with one GET; a 404 there is upstream's NotFound.

use std::sync::Arc;

use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tracing::{debug, warn};

use super::crd::SecretProviderClass as SpcObject;
use crate::provider::BoxFuture;
use crate::spc::SecretProviderClass;
use crate::spc_source::{SpcLookupError, SpcSource, check_name};

/// SPCs from the API server.
pub struct KubeSpcSource {
    client: kube::Client,
    store: Store<SpcObject>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for KubeSpcSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSpcSource")
            .field("cached", &self.store.len())
            .finish_non_exhaustive()
    }
}

impl Drop for KubeSpcSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeSpcSource {
    /// Starts watching every SPC of the cluster (RBAC: get, list, watch on
    /// secretproviderclasses). Returns at once; lookups fall back to a GET until the first list
    /// is in.
    pub fn start(clients: &super::Clients) -> Arc<Self> {
        let client = clients.call.clone();
        let (store, writer) = reflector::store();
        let api: Api<SpcObject> = Api::all(clients.watch.clone());
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "watching SecretProviderClasses failed; retrying"),
                }
            }
        });
        Arc::new(Self {
            client,
            store,
            task,
        })
    }

    /// SPCs currently in the store.
    pub fn cached(&self) -> usize {
        self.store.len()
    }

    async fn load(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<SecretProviderClass, SpcLookupError> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        let key = ObjectRef::<SpcObject>::new(name).within(namespace);
        let object = match self.store.get(&key) {
            Some(o) => o,
            None => {
                debug!(
                    namespace,
                    name, "SecretProviderClass not in the store yet; GET"
                );
                let api: Api<SpcObject> = Api::namespaced(self.client.clone(), namespace);
                match api.get_opt(name).await {
                    Ok(Some(o)) => Arc::new(o),
                    Ok(None) => {
                        return Err(SpcLookupError::NotFound {
                            namespace: namespace.to_owned(),
                            name: name.to_owned(),
                            detail: format!(
                                "secretproviderclasses.secrets-store.csi.x-k8s.io \"{name}\" not found"
                            ),
                        });
                    }
                    Err(e) => {
                        return Err(SpcLookupError::Api {
                            namespace: namespace.to_owned(),
                            name: name.to_owned(),
                            detail: e.to_string(),
                        });
                    }
                }
            }
        };
        let manifest = object.to_manifest().to_string();
        let mut spc = SecretProviderClass::from_yaml(&manifest).map_err(|source| {
            SpcLookupError::InvalidObject {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source: Box::new(source),
            }
        })?;
        spc.namespace = Some(namespace.to_owned());
        Ok(spc)
    }
}

impl SpcSource for KubeSpcSource {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<SecretProviderClass, SpcLookupError>> {
        Box::pin(self.load(namespace, name))
    }
}
