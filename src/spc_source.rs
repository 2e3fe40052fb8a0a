//! Where a volume's SecretProviderClass comes from: the `SpcSource` port and its directory
//! implementation (`--spc-dir DIR` reads `DIR/<namespace>/<name>.yaml`).
//!
//! The Kubernetes API source (`k8s::KubeSpcSource`, a reflector store) implements the same
//! trait; the CSI server only sees the trait. No tonic, no kube here.

use std::path::{Path, PathBuf};

use crate::provider::BoxFuture;
use crate::spc::{MAX_NAME_LEN, SecretProviderClass, SpcError};

/// Why an SPC could not be obtained. Messages name the SPC (and file), never a value.
#[derive(Debug, thiserror::Error)]
pub enum SpcLookupError {
    /// There is no such SPC (upstream's message, so users can grep for it).
    #[error("failed to get secretproviderclass {namespace}/{name}, error: {detail}")]
    NotFound {
        /// The pod's namespace.
        namespace: String,
        /// The SPC name.
        name: String,
        /// Where it was looked for.
        detail: String,
    },
    /// The namespace or name cannot be an SPC's (and could escape the directory).
    #[error("invalid SecretProviderClass {what} '{value}': {reason}")]
    InvalidName {
        /// `namespace` or `name`.
        what: &'static str,
        /// The offending value (a name, never a secret).
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The SPC exists but is invalid.
    #[error("SecretProviderClass {namespace}/{name} ({path}): {source}")]
    Invalid {
        /// The pod's namespace.
        namespace: String,
        /// The SPC name.
        name: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: Box<SpcError>,
    },
    /// The SPC from the Kubernetes API is invalid.
    #[error("failed to get secretproviderclass {namespace}/{name}, error: {source}")]
    InvalidObject {
        /// The pod's namespace.
        namespace: String,
        /// The SPC name.
        name: String,
        /// What is wrong.
        source: Box<SpcError>,
    },
    /// The Kubernetes API could not be asked (unreachable, forbidden, 5xx).
    #[error("failed to get secretproviderclass {namespace}/{name}, error: {detail}")]
    Api {
        /// The pod's namespace.
        namespace: String,
        /// The SPC name.
        name: String,
        /// The API error (a status message, never a value).
        detail: String,
    },
    /// The SPC file names another SPC than its location says.
    #[error(
        "SecretProviderClass file {path} has metadata.{field} '{found}', expected '{expected}' (files are DIR/<namespace>/<name>.yaml)"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// `name` or `namespace`.
        field: &'static str,
        /// What the file says.
        found: String,
        /// What its location says.
        expected: String,
    },
    /// The SPC could not be read (I/O error other than "not found").
    #[error(
        "failed to get secretproviderclass {namespace}/{name}, error: reading {path}: {source}"
    )]
    Read {
        /// The pod's namespace.
        namespace: String,
        /// The SPC name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Looks up SecretProviderClasses by the pod's namespace and the volume's
/// `secretProviderClass` attribute.
pub trait SpcSource: Send + Sync {
    /// The SPC `name` in `namespace`, parsed and validated, with `namespace` set.
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<SecretProviderClass, SpcLookupError>>;
}

/// SPCs as files: `DIR/<namespace>/<name>.yaml`.
#[derive(Debug, Clone)]
pub struct DirSpcSource {
    dir: PathBuf,
}

impl DirSpcSource {
    /// A source reading under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `namespace/name`, after checking both are plain Kubernetes names.
    pub fn path_of(&self, namespace: &str, name: &str) -> Result<PathBuf, SpcLookupError> {
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        Ok(self.dir.join(namespace).join(format!("{name}.yaml")))
    }

    async fn load(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<SecretProviderClass, SpcLookupError> {
        let path = self.path_of(namespace, name)?;
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpcLookupError::NotFound {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    detail: format!("{} does not exist", path.display()),
                });
            }
            Err(source) => {
                return Err(SpcLookupError::Read {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    path,
                    source,
                });
            }
        };
        let mut spc =
            SecretProviderClass::from_yaml(&text).map_err(|source| SpcLookupError::Invalid {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                path: path.clone(),
                source: Box::new(source),
            })?;
        if spc.name != name {
            return Err(SpcLookupError::Mismatch {
                path,
                field: "name",
                found: spc.name,
                expected: name.to_owned(),
            });
        }
        match &spc.namespace {
            Some(ns) if ns != namespace => {
                return Err(SpcLookupError::Mismatch {
                    path,
                    field: "namespace",
                    found: ns.clone(),
                    expected: namespace.to_owned(),
                });
            }
            Some(_) => {}
            None => spc.namespace = Some(namespace.to_owned()),
        }
        Ok(spc)
    }
}

impl SpcSource for DirSpcSource {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<SecretProviderClass, SpcLookupError>> {
        Box::pin(self.load(namespace, name))
    }
}

/// Checks a Kubernetes object name (DNS subdomain: lowercase alphanumerics, `-` and `.`), which also
/// guarantees the name cannot leave the directory.
pub fn check_name(what: &'static str, value: &str) -> Result<(), SpcLookupError> {
    let invalid = |reason| SpcLookupError::InvalidName {
        what,
        value: value.chars().take(MAX_NAME_LEN).collect(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("empty"));
    }
    if value.len() > 253 {
        return Err(invalid("longer than 253 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(invalid(
            "only lowercase letters, digits, '-' and '.' are allowed",
        ));
    }
    let first_last_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_last_ok(value.bytes().next()) || !first_last_ok(value.bytes().last()) {
        return Err(invalid("must start and end with a letter or digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SPC: &str = r#"apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: app
spec:
  provider: openbao
  parameters:
    roleName: r
    objects: |
      - objectName: a
        secretPath: secret/data/a
        secretKey: k
"#;

    fn dir_with(ns: &str, file: &str, text: &str) -> (PathBuf, DirSpcSource) {
        let base = std::env::temp_dir().join(format!(
            "baofs-spc-source-{}-{ns}-{file}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join(ns)).unwrap();
        std::fs::write(base.join(ns).join(file), text).unwrap();
        (base.clone(), DirSpcSource::new(base))
    }

    #[tokio::test]
    async fn reads_and_fills_the_namespace() {
        let (base, src) = dir_with("apps", "app.yaml", SPC);
        let spc = src.get("apps", "app").await.unwrap();
        assert_eq!(spc.name, "app");
        assert_eq!(spc.namespace.as_deref(), Some("apps"));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[tokio::test]
    async fn missing_is_not_found_with_upstream_message() {
        let (base, src) = dir_with("apps2", "app.yaml", SPC);
        let e = src.get("apps2", "nope").await.unwrap_err();
        assert!(matches!(e, SpcLookupError::NotFound { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("failed to get secretproviderclass apps2/nope"),
            "{e}"
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[tokio::test]
    async fn invalid_and_mismatched_files_are_reported() {
        let (base, src) = dir_with("apps3", "bad.yaml", "kind: Nope\n");
        let e = src.get("apps3", "bad").await.unwrap_err();
        assert!(matches!(e, SpcLookupError::Invalid { .. }), "{e:?}");
        assert!(e.to_string().contains("bad.yaml"), "{e}");
        std::fs::write(base.join("apps3/other.yaml"), SPC).unwrap();
        let e = src.get("apps3", "other").await.unwrap_err();
        assert!(
            matches!(e, SpcLookupError::Mismatch { field: "name", .. }),
            "{e:?}"
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn names_cannot_escape_the_directory() {
        let src = DirSpcSource::new("/spc");
        for (ns, name) in [
            ("..", "x"),
            ("a", "../x"),
            ("a/b", "x"),
            ("", "x"),
            ("a", "X"),
            ("a", "-x"),
        ] {
            assert!(
                matches!(
                    src.path_of(ns, name),
                    Err(SpcLookupError::InvalidName { .. })
                ),
                "{ns}/{name}"
            );
        }
        assert_eq!(
            src.path_of("harbor", "harbor-secrets.v1").unwrap(),
            PathBuf::from("/spc/harbor/harbor-secrets.v1.yaml")
        );
    }
}
