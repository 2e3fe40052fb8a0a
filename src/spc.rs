//! The SecretProviderClass stage: parses and validates a `SecretProviderClass` (SPC) the way the
//! Secrets Store CSI Driver and the OpenBao CSI provider read it (anchors.md §1, §10).
//!
//! Everything here is pure: no I/O, no environment (TLS files are read by the provider). Values
//! baofs cannot honour are rejected with an error naming them rather than silently ignored, so a
//! manifest never behaves differently from what it says. Must not import `reqwest`, `kube`,
//! `tonic` or `fuser`.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde_yaml::Value;

/// `apiVersion`s accepted (v1 is the storage version, v1alpha1 is deprecated but served).
pub const API_VERSIONS: [&str; 2] = [
    "secrets-store.csi.x-k8s.io/v1",
    "secrets-store.csi.x-k8s.io/v1alpha1",
];
/// The only `kind` accepted.
pub const KIND: &str = "SecretProviderClass";
/// `spec.provider` values accepted: OpenBao CSI provider ≥ 2.0.0 and the Vault CSI provider.
pub const PROVIDERS: [&str; 2] = ["openbao", "vault"];
/// Parameter prefixes, in the order the OpenBao provider tries them (first present wins).
pub const PARAMETER_PREFIXES: [&str; 3] = ["bao", "openbao", "vault"];
/// Auth mount used when the SPC names none.
pub const DEFAULT_AUTH_MOUNT: &str = "kubernetes";
/// Longest object path component, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest object path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Highest `filePermission` accepted: no setuid, setgid or sticky bit on secret files.
pub const MAX_FILE_MODE: u32 = 0o777;

/// Fields an entry of the `objects` parameter may have.
const OBJECT_FIELDS: [&str; 7] = [
    "objectName",
    "secretPath",
    "secretKey",
    "filePermission",
    "encoding",
    "method",
    "secretArgs",
];

/// A parsed and validated SecretProviderClass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretProviderClass {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: Option<String>,
    /// `spec.provider`: `openbao` or `vault`.
    pub provider: String,
    /// The OpenBao parameters of `spec.parameters`.
    pub params: OpenBaoParams,
    /// The objects of `spec.parameters.objects`, validated, in declaration order.
    pub objects: Vec<ObjectSpec>,
    /// `spec.secretObjects`, validated against `objects` (for the Secret sync feature).
    pub secret_objects: Vec<SecretObjectSpec>,
    /// The manifest this was parsed from (an SPC holds no secret), kept so a successor process
    /// can re-create a volume exactly as it was published after a restart.
    pub manifest: std::sync::Arc<str>,
}

/// The OpenBao connection and login parameters of an SPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBaoParams {
    /// `<P>Address`; `None` means "use the driver's default (`BAO_ADDR`/`VAULT_ADDR`)".
    pub address: Option<String>,
    /// `<P>RoleName` or `roleName`: the auth role to log in with.
    pub role_name: String,
    /// `<P>KubernetesMountPath` or `<P>AuthMountPath` without surrounding slashes;
    /// `kubernetes` by default.
    pub auth_mount: String,
    /// `audience`: which service-account token to log in with.
    pub audience: Option<String>,
    /// `<P>Namespace`: sent as `X-Vault-Namespace` on every request (login included).
    pub namespace: Option<String>,
    /// `<P>CACertPath`, `<P>CADirectory`, `<P>TLSServerName`, `<P>TLSClientCertPath`,
    /// `<P>TLSClientKeyPath`, `<P>SkipTLSVerify`.
    pub tls: TlsParams,
}

/// TLS settings of the connection to OpenBao, as the SPC gives them. Paths are read by the
/// provider (on the node, like upstream's paths inside the provider pod); for each parameter the
/// first prefix present wins (`bao`, `openbao`, `vault`) and an empty value means "not set".
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsParams {
    /// `<P>CACertPath`: PEM file of the CA certificates to trust (instead of the system's).
    pub ca_cert_path: Option<String>,
    /// `<P>CADirectory`: directory of PEM files of CA certificates to trust; ignored when
    /// `ca_cert_path` is set (upstream's precedence).
    pub ca_directory: Option<String>,
    /// `<P>TLSServerName`: the name the server certificate is checked against instead of the
    /// address's host.
    pub server_name: Option<String>,
    /// `<P>TLSClientCertPath`: PEM client certificate chain (always with `client_key_path`).
    pub client_cert_path: Option<String>,
    /// `<P>TLSClientKeyPath`: PEM private key of the client certificate.
    pub client_key_path: Option<String>,
    /// `<P>SkipTLSVerify`: accept any server certificate (logged as a warning).
    pub skip_verify: bool,
}

impl TlsParams {
    /// Whether nothing is configured (the system's roots, no client certificate).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// One object of the `objects` parameter: a file in the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    /// `objectName`: the file's path in the volume, and the object id.
    pub path: ObjectPath,
    /// `secretPath` as written, possibly with `/`, `v1/` and a query string such as `?version=2`.
    pub secret_path: String,
    /// `secretKey`: the top-level key to extract; `None` writes the whole secret as JSON.
    pub secret_key: Option<String>,
    /// `filePermission` (at most 0o777); `None` means the volume default.
    pub mode: Option<u32>,
    /// `encoding` of the extracted value.
    pub encoding: Encoding,
    /// `method`: `GET` (a read) by default; `PUT` or `POST` issue a dynamic secret.
    pub method: ObjectMethod,
    /// `secretArgs`: the JSON body of a `PUT`/`POST` (`None` when absent or empty).
    pub secret_args: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The HTTP method of an object's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ObjectMethod {
    /// A read (KV, or a dynamic secret issued by a read such as `database/creds/<role>`).
    #[default]
    Get,
    /// A write that issues a secret, e.g. `pki/issue/<role>` with `secretArgs`.
    Put,
    /// Same as `Put` (OpenBao treats both as an update).
    Post,
}

impl ObjectMethod {
    /// `GET`, `PUT` or `POST`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectMethod::Get => "GET",
            ObjectMethod::Put => "PUT",
            ObjectMethod::Post => "POST",
        }
    }

    /// Parses a `method` value in any case; empty means `GET`.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.eq_ignore_ascii_case("GET") {
            Some(ObjectMethod::Get)
        } else if s.eq_ignore_ascii_case("PUT") {
            Some(ObjectMethod::Put)
        } else if s.eq_ignore_ascii_case("POST") {
            Some(ObjectMethod::Post)
        } else {
            None
        }
    }

    /// Whether the request writes (issues a secret) rather than reads.
    pub fn is_write(self) -> bool {
        self != ObjectMethod::Get
    }
}

impl fmt::Display for ObjectMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ObjectSpec {
    /// The OpenBao API path of `secret_path`, without a leading `/`, the `v1/` prefix or the
    /// query string: `/v1/secret/data/app?version=2` gives `secret/data/app`. Safe to log.
    pub fn api_path(&self) -> &str {
        api_path_of(&self.secret_path)
    }

    /// The query string of `secret_path` without the `?`, if any (e.g. `version=2`).
    pub fn query(&self) -> Option<&str> {
        self.secret_path
            .split_once('?')
            .map(|(_, q)| q)
            .filter(|q| !q.is_empty())
    }
}

fn api_path_of(secret_path: &str) -> &str {
    let path = secret_path.split_once('?').map_or(secret_path, |(p, _)| p);
    let path = path.trim_start_matches('/');
    path.strip_prefix("v1/").unwrap_or(path)
}

/// How an extracted value is decoded before it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// Written as is (`utf-8`, the default).
    #[default]
    Utf8,
    /// Standard base64, decoded.
    Base64,
    /// Hexadecimal, decoded.
    Hex,
}

impl Encoding {
    /// The name used in SPCs.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf-8",
            Encoding::Base64 => "base64",
            Encoding::Hex => "hex",
        }
    }

    /// Parses an `encoding` value: `utf-8` (or empty), `base64`, `hex`, in any case.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.eq_ignore_ascii_case("utf-8") {
            Some(Encoding::Utf8)
        } else if s.eq_ignore_ascii_case("base64") {
            Some(Encoding::Base64)
        } else if s.eq_ignore_ascii_case("hex") {
            Some(Encoding::Hex)
        } else {
            None
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated relative path of an object in the volume: non-empty, not absolute, no empty,
/// `.` or `..` components, components of at most 255 bytes without NUL, at most 4096 bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectPath(String);

/// Why a string is not a valid [`ObjectPath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidObjectPath {
    /// The path is empty.
    #[error("is empty")]
    Empty,
    /// The path starts with `/`.
    #[error("is absolute (starts with '/')")]
    Absolute,
    /// The path has an empty component (`a//b`, or a trailing `/`).
    #[error("has an empty component ('//' or a trailing '/')")]
    EmptyComponent,
    /// The path has a `.` or `..` component.
    #[error("has a '.' or '..' component")]
    DotComponent,
    /// The path contains a NUL byte.
    #[error("contains a NUL byte")]
    Nul,
    /// A component is longer than 255 bytes.
    #[error("has a component longer than {MAX_NAME_LEN} bytes")]
    ComponentTooLong,
    /// The path is longer than 4096 bytes.
    #[error("is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
}

impl ObjectPath {
    /// Validates `s` as an object path.
    pub fn parse(s: &str) -> Result<Self, InvalidObjectPath> {
        if s.is_empty() {
            return Err(InvalidObjectPath::Empty);
        }
        if s.starts_with('/') {
            return Err(InvalidObjectPath::Absolute);
        }
        if s.contains('\0') {
            return Err(InvalidObjectPath::Nul);
        }
        if s.len() > MAX_PATH_LEN {
            return Err(InvalidObjectPath::TooLong);
        }
        for c in s.split('/') {
            match c {
                "" => return Err(InvalidObjectPath::EmptyComponent),
                "." | ".." => return Err(InvalidObjectPath::DotComponent),
                c if c.len() > MAX_NAME_LEN => return Err(InvalidObjectPath::ComponentTooLong),
                _ => {}
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// The path, e.g. `db/password`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, e.g. `db`, `password`.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component (the file name).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The proper ancestors (directories), shortest first: `a/b/c` gives `a`, `a/b`.
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(move |(i, _)| &self.0[..i])
    }
}

impl fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ObjectPath {
    type Err = InvalidObjectPath;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for ObjectPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ObjectPath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// One entry of `spec.secretObjects`: a Kubernetes Secret to sync from the volume's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretObjectSpec {
    /// `secretName`.
    pub secret_name: String,
    /// `type`, `Opaque` by default.
    pub secret_type: String,
    /// `labels`.
    pub labels: BTreeMap<String, String>,
    /// `annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `data`.
    pub data: Vec<SecretObjectData>,
}

/// One entry of `spec.secretObjects[].data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretObjectData {
    /// `objectName`: a declared object.
    pub object_name: ObjectPath,
    /// `key` in the Secret's data.
    pub key: String,
}

/// Why an SPC was rejected. Every message names the SPC (when known) and the field at fault;
/// no message contains a secret (an SPC holds none).
#[derive(Debug, thiserror::Error)]
pub enum SpcError {
    /// The text is not YAML, or not shaped like a SecretProviderClass.
    #[error("invalid SecretProviderClass YAML: {0}")]
    Yaml(#[source] serde_yaml::Error),
    /// `metadata.name` is missing or empty.
    #[error("SecretProviderClass has no metadata.name")]
    MissingName,
    /// Wrong or missing `apiVersion`.
    #[error(
        "SecretProviderClass '{spc}': apiVersion '{found}' is not supported (expected secrets-store.csi.x-k8s.io/v1 or v1alpha1)"
    )]
    ApiVersion {
        /// The SPC.
        spc: String,
        /// The apiVersion found.
        found: String,
    },
    /// Wrong or missing `kind`.
    #[error("SecretProviderClass '{spc}': kind '{found}' is not SecretProviderClass")]
    Kind {
        /// The SPC.
        spc: String,
        /// The kind found.
        found: String,
    },
    /// `spec.provider` is missing or not `openbao`/`vault`.
    #[error(
        "SecretProviderClass '{spc}': spec.provider '{found}' is not supported (expected 'openbao' or 'vault')"
    )]
    Provider {
        /// The SPC.
        spc: String,
        /// The provider found.
        found: String,
    },
    /// `spec.parameters` is missing or empty.
    #[error("SecretProviderClass '{spc}': spec.parameters not set")]
    NoParameters {
        /// The SPC.
        spc: String,
    },
    /// A parameter value is not a string.
    #[error("SecretProviderClass '{spc}': parameter '{parameter}' must be a string (quote it)")]
    ParameterNotString {
        /// The SPC.
        spc: String,
        /// The parameter.
        parameter: String,
    },
    /// No role name.
    #[error("missing 'roleName' in SecretProviderClass '{spc}'")]
    MissingRoleName {
        /// The SPC.
        spc: String,
    },
    /// Both auth mount parameters are set.
    #[error("SecretProviderClass '{spc}': cannot set both '{first}' and '{second}'")]
    ConflictingParameters {
        /// The SPC.
        spc: String,
        /// One parameter.
        first: String,
        /// The other parameter.
        second: String,
    },
    /// A parameter has an invalid value.
    #[error("SecretProviderClass '{spc}': parameter '{parameter}' {reason}")]
    InvalidParameter {
        /// The SPC.
        spc: String,
        /// The parameter.
        parameter: String,
        /// What is wrong.
        reason: String,
    },
    /// The `objects` parameter is not a YAML list of mappings.
    #[error("SecretProviderClass '{spc}': parameter 'objects' is invalid: {reason}")]
    ObjectsYaml {
        /// The SPC.
        spc: String,
        /// What is wrong (with the YAML location inside `objects`).
        reason: String,
    },
    /// No objects.
    #[error("SecretProviderClass '{spc}': no objects (parameter 'objects' is missing or empty)")]
    NoObjects {
        /// The SPC.
        spc: String,
    },
    /// An object has a field baofs does not know.
    #[error("SecretProviderClass '{spc}': object '{object}' has unknown field '{field}'")]
    UnknownObjectField {
        /// The SPC.
        spc: String,
        /// The object (its name, or `objects[i]`).
        object: String,
        /// The field.
        field: String,
    },
    /// An object field has an invalid value.
    #[error("SecretProviderClass '{spc}': object '{object}': field '{field}' {reason}")]
    InvalidObjectField {
        /// The SPC.
        spc: String,
        /// The object (its name, or `objects[i]`).
        object: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `encoding` is not utf-8, base64 or hex.
    #[error(
        "SecretProviderClass '{spc}': unknown encoding '{encoding}' for object '{object}' (expected utf-8, base64 or hex)"
    )]
    UnknownEncoding {
        /// The SPC.
        spc: String,
        /// The object.
        object: String,
        /// The encoding found.
        encoding: String,
    },
    /// Two objects have the same name.
    #[error("SecretProviderClass '{spc}': objectName '{object}' is declared more than once")]
    DuplicateObject {
        /// The SPC.
        spc: String,
        /// The duplicated name.
        object: String,
    },
    /// An object is also a directory of another object.
    #[error(
        "SecretProviderClass '{spc}': object '{file}' is a file, but object '{nested}' needs it to be a directory"
    )]
    FileDirectoryConflict {
        /// The SPC.
        spc: String,
        /// The object used as a directory.
        file: String,
        /// The object below it.
        nested: String,
    },
    /// A `secretObjects` entry is invalid.
    #[error("SecretProviderClass '{spc}': secretObjects entry '{secret}': {reason}")]
    InvalidSecretObject {
        /// The SPC.
        spc: String,
        /// The entry (its `secretName`, or `secretObjects[i]`).
        secret: String,
        /// What is wrong.
        reason: String,
    },
}

// ----- raw YAML shape -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpc {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<RawMetadata>,
    spec: Option<RawSpec>,
}

#[derive(Deserialize, Default)]
struct RawMetadata {
    name: Option<String>,
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    provider: Option<String>,
    parameters: Option<BTreeMap<String, Value>>,
    secret_objects: Option<Vec<RawSecretObject>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSecretObject {
    secret_name: Option<String>,
    #[serde(rename = "type")]
    secret_type: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    data: Option<Vec<RawSecretObjectData>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSecretObjectData {
    object_name: Option<String>,
    key: Option<String>,
}

impl SecretProviderClass {
    /// Parses and validates an SPC manifest (YAML, or JSON, which is YAML).
    pub fn from_yaml(text: &str) -> Result<Self, SpcError> {
        let raw: RawSpc = serde_yaml::from_str(text).map_err(SpcError::Yaml)?;
        let metadata = raw.metadata.unwrap_or_default();
        let name = metadata
            .name
            .filter(|n| !n.is_empty())
            .ok_or(SpcError::MissingName)?;
        let namespace = metadata.namespace.filter(|n| !n.is_empty());
        let spc = match &namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.clone(),
        };

        let api_version = raw.api_version.unwrap_or_default();
        if !API_VERSIONS.contains(&api_version.as_str()) {
            return Err(SpcError::ApiVersion {
                spc,
                found: api_version,
            });
        }
        let kind = raw.kind.unwrap_or_default();
        if kind != KIND {
            return Err(SpcError::Kind { spc, found: kind });
        }
        let spec = raw
            .spec
            .ok_or_else(|| SpcError::NoParameters { spc: spc.clone() })?;
        let provider = spec.provider.unwrap_or_default();
        if !PROVIDERS.contains(&provider.as_str()) {
            return Err(SpcError::Provider {
                spc,
                found: provider,
            });
        }

        let params = string_parameters(&spc, spec.parameters.unwrap_or_default())?;
        if params.is_empty() {
            return Err(SpcError::NoParameters { spc });
        }
        let openbao = parse_openbao_params(&spc, &params)?;
        let objects = parse_objects(&spc, params.get("objects").map(String::as_str))?;
        let secret_objects = parse_secret_objects(&spc, spec.secret_objects, &objects)?;

        Ok(Self {
            name,
            namespace,
            provider,
            params: openbao,
            objects,
            secret_objects,
            manifest: text.into(),
        })
    }

    /// `namespace/name` (or `name`), for messages.
    pub fn reference(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// `spec.parameters` values must be strings (the CRD says so, and the apiserver enforces it).
fn string_parameters(
    spc: &str,
    raw: BTreeMap<String, Value>,
) -> Result<BTreeMap<String, String>, SpcError> {
    raw.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(SpcError::ParameterNotString {
                spc: spc.to_owned(),
                parameter: k,
            }),
        })
        .collect()
}

/// `<P><suffix>` for the first prefix present, with the key found.
fn prefixed<'a>(params: &'a BTreeMap<String, String>, suffix: &str) -> Option<(String, &'a str)> {
    PARAMETER_PREFIXES.iter().find_map(|p| {
        let key = format!("{p}{suffix}");
        params.get(&key).map(|v| (key, v.as_str()))
    })
}

fn parse_openbao_params(
    spc: &str,
    params: &BTreeMap<String, String>,
) -> Result<OpenBaoParams, SpcError> {
    let address = prefixed(params, "Address")
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);

    // A prefixed role name wins over `roleName`, as upstream.
    let role_name = match prefixed(params, "RoleName") {
        Some((_, v)) => v,
        None => params.get("roleName").map_or("", String::as_str),
    };
    if role_name.is_empty() {
        return Err(SpcError::MissingRoleName {
            spc: spc.to_owned(),
        });
    }

    let auth_mount = match (
        prefixed(params, "KubernetesMountPath"),
        prefixed(params, "AuthMountPath"),
    ) {
        (Some((first, _)), Some((second, _))) => {
            return Err(SpcError::ConflictingParameters {
                spc: spc.to_owned(),
                first,
                second,
            });
        }
        (Some((key, v)), None) | (None, Some((key, v))) => {
            // Empty means "the default", as upstream.
            let mount = v.trim().trim_matches('/');
            if mount.is_empty() {
                DEFAULT_AUTH_MOUNT.to_owned()
            } else if mount
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('?'))
            {
                return Err(SpcError::InvalidParameter {
                    spc: spc.to_owned(),
                    parameter: key,
                    reason: format!("'{v}' is not a valid auth mount path"),
                });
            } else {
                mount.to_owned()
            }
        }
        (None, None) => DEFAULT_AUTH_MOUNT.to_owned(),
    };

    let audience = params.get("audience").filter(|a| !a.is_empty()).cloned();

    let namespace = match prefixed(params, "Namespace") {
        Some((key, v)) => {
            let ns = v.trim().trim_matches('/');
            if ns.is_empty() {
                None
            } else if !ns.chars().all(|c| c.is_ascii_graphic()) {
                return Err(SpcError::InvalidParameter {
                    spc: spc.to_owned(),
                    parameter: key,
                    reason: format!(
                        "'{v}' is not a valid namespace (printable ASCII without spaces)"
                    ),
                });
            } else {
                Some(ns.to_owned())
            }
        }
        None => None,
    };

    Ok(OpenBaoParams {
        address,
        role_name: role_name.to_owned(),
        auth_mount,
        audience,
        namespace,
        tls: parse_tls_params(spc, params)?,
    })
}

/// The TLS parameters, with upstream's rules: for each one the first prefix present wins, an
/// empty value is "not set", a client certificate needs its key and the other way round.
fn parse_tls_params(spc: &str, params: &BTreeMap<String, String>) -> Result<TlsParams, SpcError> {
    let text = |suffix: &str| -> Option<(String, String)> {
        prefixed(params, suffix)
            .map(|(k, v)| (k, v.trim().to_owned()))
            .filter(|(_, v)| !v.is_empty())
    };
    // Every prefix's value must parse, even one a higher-priority prefix overrides.
    let mut skip_verify = None;
    for p in PARAMETER_PREFIXES {
        let key = format!("{p}SkipTLSVerify");
        if let Some(v) = params.get(&key) {
            let parsed = parse_go_bool(v).ok_or_else(|| SpcError::InvalidParameter {
                spc: spc.to_owned(),
                parameter: key.clone(),
                reason: format!("must be 'true' or 'false', not '{v}'"),
            })?;
            skip_verify.get_or_insert(parsed);
        }
    }
    let client_cert = text("TLSClientCertPath");
    let client_key = text("TLSClientKeyPath");
    match (&client_cert, &client_key) {
        (Some((key, _)), None) => {
            return Err(SpcError::InvalidParameter {
                spc: spc.to_owned(),
                parameter: key.clone(),
                reason: "needs '<prefix>TLSClientKeyPath' too (both client cert and client key must be provided)".to_owned(),
            });
        }
        (None, Some((key, _))) => {
            return Err(SpcError::InvalidParameter {
                spc: spc.to_owned(),
                parameter: key.clone(),
                reason: "needs '<prefix>TLSClientCertPath' too (both client cert and client key must be provided)".to_owned(),
            });
        }
        _ => {}
    }
    let server_name = text("TLSServerName");
    if let Some((key, name)) = &server_name
        && !name.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(SpcError::InvalidParameter {
            spc: spc.to_owned(),
            parameter: key.clone(),
            reason: format!("'{name}' is not a DNS name or IP address"),
        });
    }
    Ok(TlsParams {
        ca_cert_path: text("CACertPath").map(|(_, v)| v),
        ca_directory: text("CADirectory").map(|(_, v)| v),
        server_name: server_name.map(|(_, v)| v),
        client_cert_path: client_cert.map(|(_, v)| v),
        client_key_path: client_key.map(|(_, v)| v),
        skip_verify: skip_verify.unwrap_or(false),
    })
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn parse_objects(spc: &str, text: Option<&str>) -> Result<Vec<ObjectSpec>, SpcError> {
    let no_objects = || SpcError::NoObjects {
        spc: spc.to_owned(),
    };
    let text = text.ok_or_else(no_objects)?;
    let value: Value = serde_yaml::from_str(text).map_err(|e| SpcError::ObjectsYaml {
        spc: spc.to_owned(),
        reason: e.to_string(),
    })?;
    let items = match value {
        Value::Null => return Err(no_objects()),
        Value::Sequence(items) => items,
        _ => {
            return Err(SpcError::ObjectsYaml {
                spc: spc.to_owned(),
                reason: "must be a YAML list of objects".to_owned(),
            });
        }
    };
    if items.is_empty() {
        return Err(no_objects());
    }

    let mut objects = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        objects.push(parse_object(spc, index, item)?);
    }

    let mut names = BTreeSet::new();
    for o in &objects {
        if !names.insert(o.path.as_str()) {
            return Err(SpcError::DuplicateObject {
                spc: spc.to_owned(),
                object: o.path.to_string(),
            });
        }
    }
    for o in &objects {
        if let Some(file) = o.path.ancestors().find(|a| names.contains(a)) {
            return Err(SpcError::FileDirectoryConflict {
                spc: spc.to_owned(),
                file: file.to_owned(),
                nested: o.path.to_string(),
            });
        }
    }
    Ok(objects)
}

fn parse_object(spc: &str, index: usize, item: Value) -> Result<ObjectSpec, SpcError> {
    let Value::Mapping(map) = item else {
        return Err(SpcError::ObjectsYaml {
            spc: spc.to_owned(),
            reason: format!("objects[{index}] is not a mapping"),
        });
    };
    let mut fields: BTreeMap<&'static str, Value> = BTreeMap::new();
    let mut unknown = None;
    for (k, v) in map {
        let key = match &k {
            Value::String(s) => s.clone(),
            other => scalar_text(other).unwrap_or_else(|| "<non-scalar key>".to_owned()),
        };
        match OBJECT_FIELDS.iter().find(|f| **f == key) {
            Some(f) => {
                fields.insert(f, v);
            }
            None => {
                unknown.get_or_insert(key);
            }
        }
    }

    let index_label = format!("objects[{index}]");
    let name_value = fields.remove("objectName").unwrap_or(Value::Null);
    let raw_name = string_field(spc, &index_label, "objectName", name_value)?;
    let label = raw_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| index_label.clone());
    if let Some(field) = unknown {
        return Err(SpcError::UnknownObjectField {
            spc: spc.to_owned(),
            object: label,
            field,
        });
    }
    let invalid = |field: &'static str, reason: String| SpcError::InvalidObjectField {
        spc: spc.to_owned(),
        object: label.clone(),
        field,
        reason,
    };

    let raw_name = raw_name.unwrap_or_default();
    let path = ObjectPath::parse(&raw_name).map_err(|e| {
        if e == InvalidObjectPath::Empty {
            invalid("objectName", "is missing or empty".to_owned())
        } else {
            invalid("objectName", format!("'{raw_name}' {e}"))
        }
    })?;

    let take = |fields: &mut BTreeMap<&'static str, Value>, f: &'static str| {
        fields.remove(f).unwrap_or(Value::Null)
    };
    let secret_path = string_field(spc, &label, "secretPath", take(&mut fields, "secretPath"))?
        .unwrap_or_default();
    validate_secret_path(&secret_path).map_err(|r| invalid("secretPath", r))?;

    let secret_key = string_field(spc, &label, "secretKey", take(&mut fields, "secretKey"))?
        .filter(|k| !k.is_empty());

    let mode = parse_file_permission(&take(&mut fields, "filePermission"))
        .map_err(|r| invalid("filePermission", r))?;

    let encoding_text =
        string_field(spc, &label, "encoding", take(&mut fields, "encoding"))?.unwrap_or_default();
    let encoding = Encoding::parse(&encoding_text).ok_or_else(|| SpcError::UnknownEncoding {
        spc: spc.to_owned(),
        object: label.clone(),
        encoding: encoding_text.clone(),
    })?;

    let method_text =
        string_field(spc, &label, "method", take(&mut fields, "method"))?.unwrap_or_default();
    let method = ObjectMethod::parse(method_text.trim()).ok_or_else(|| {
        invalid(
            "method",
            format!("'{method_text}' is not supported (GET, PUT or POST)"),
        )
    })?;
    let secret_args = match take(&mut fields, "secretArgs") {
        Value::Null => None,
        Value::Mapping(m) if m.is_empty() => None,
        v @ Value::Mapping(_) => match serde_json::to_value(&v) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            Ok(_) => return Err(invalid("secretArgs", "must be a mapping".to_owned())),
            Err(e) => {
                return Err(invalid(
                    "secretArgs",
                    format!("cannot be sent as JSON ({e})"),
                ));
            }
        },
        _ => return Err(invalid("secretArgs", "must be a mapping".to_owned())),
    };
    if secret_args.is_some() && !method.is_write() {
        // OpenBao ignores the body of a GET: refuse rather than drop the arguments.
        return Err(invalid(
            "secretArgs",
            "needs method PUT or POST (a GET request carries no body)".to_owned(),
        ));
    }

    Ok(ObjectSpec {
        path,
        secret_path,
        secret_key,
        mode,
        encoding,
        method,
        secret_args,
    })
}

/// The text of a YAML scalar, as Go's yaml.v3 would store it in a string field.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A string-typed object field: scalars are taken as text (like yaml.v3), null means absent.
fn string_field(
    spc: &str,
    object: &str,
    field: &'static str,
    v: Value,
) -> Result<Option<String>, SpcError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => scalar_text(&other)
            .map(Some)
            .ok_or_else(|| SpcError::InvalidObjectField {
                spc: spc.to_owned(),
                object: object.to_owned(),
                field,
                reason: "must be a string".to_owned(),
            }),
    }
}

fn validate_secret_path(secret_path: &str) -> Result<(), String> {
    if secret_path.trim().is_empty() {
        return Err("is missing or empty".to_owned());
    }
    if secret_path.chars().any(char::is_control) {
        return Err("contains a control character".to_owned());
    }
    let path = api_path_of(secret_path);
    if path.is_empty() {
        return Err(format!("'{}' has no path", strip_query(secret_path)));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "'{}' has an empty, '.' or '..' segment",
            strip_query(secret_path)
        ));
    }
    Ok(())
}

fn strip_query(p: &str) -> &str {
    p.split_once('?').map_or(p, |(p, _)| p)
}

/// `filePermission` as Go's yaml.v3 reads it into an `os.FileMode`. serde_yaml hands an
/// unquoted `0600` over as the string "0600" (YAML 1.2 has no leading-zero octal), `0o600` as
/// 384 and `420` as 420, so strings are parsed like Go's `strconv.ParseInt(s, 0, 64)`.
/// 0 means "not set" (upstream's `omitempty`).
fn parse_file_permission(v: &Value) -> Result<Option<u32>, String> {
    let mode: u64 = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => match n.as_u64() {
            Some(m) => m,
            None => return Err(format!("{n} is not a non-negative integer")),
        },
        Value::String(s) => parse_go_uint(s)
            .ok_or_else(|| format!("'{s}' is not an integer such as 0600 or 0o644"))?,
        _ => return Err("must be an integer such as 0600".to_owned()),
    };
    if mode > 0o7777 {
        return Err(format!("{mode:#o} is not a file mode (at most 0o777)"));
    }
    if mode > u64::from(MAX_FILE_MODE) {
        return Err(format!(
            "{mode:#o} sets setuid, setgid or sticky bits, which secret files may not have (at most 0o777)"
        ));
    }
    // Lossless: mode <= 0o777.
    let mode = u32::try_from(mode).map_err(|_| "out of range".to_owned())?;
    Ok((mode != 0).then_some(mode))
}

/// Go's `strconv.ParseUint(s, 0, 64)`: `0x`/`0o`/`0b` prefixes, a leading `0` means octal,
/// underscores between digits allowed.
fn parse_go_uint(s: &str) -> Option<u64> {
    let s = s.strip_prefix('+').unwrap_or(s);
    let lower = s.to_ascii_lowercase();
    let (digits, radix) = if let Some(d) = lower.strip_prefix("0x") {
        (d, 16)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (d, 8)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (d, 2)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (&lower[1..], 8)
    } else {
        (lower.as_str(), 10)
    };
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() || digits.starts_with('+') || digits.starts_with('-') {
        return None;
    }
    u64::from_str_radix(&digits, radix).ok()
}

fn parse_secret_objects(
    spc: &str,
    raw: Option<Vec<RawSecretObject>>,
    objects: &[ObjectSpec],
) -> Result<Vec<SecretObjectSpec>, SpcError> {
    let declared: BTreeSet<&str> = objects.iter().map(|o| o.path.as_str()).collect();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, s) in raw.unwrap_or_default().into_iter().enumerate() {
        let secret_name = s.secret_name.unwrap_or_default();
        let label = if secret_name.is_empty() {
            format!("secretObjects[{i}]")
        } else {
            secret_name.clone()
        };
        let invalid = |reason: String| SpcError::InvalidSecretObject {
            spc: spc.to_owned(),
            secret: label.clone(),
            reason,
        };
        if secret_name.is_empty() {
            return Err(invalid("secretName is missing or empty".to_owned()));
        }
        if !seen.insert(secret_name.clone()) {
            return Err(invalid("secretName is declared more than once".to_owned()));
        }
        let raw_data = s.data.unwrap_or_default();
        if raw_data.is_empty() {
            return Err(invalid("data is missing or empty".to_owned()));
        }
        let mut data = Vec::with_capacity(raw_data.len());
        let mut keys = BTreeSet::new();
        for (j, d) in raw_data.into_iter().enumerate() {
            let object_name = d.object_name.unwrap_or_default();
            let key = d.key.unwrap_or_default();
            if key.is_empty() {
                return Err(invalid(format!("data[{j}].key is missing or empty")));
            }
            if !keys.insert(key.clone()) {
                return Err(invalid(format!(
                    "data key '{key}' is declared more than once"
                )));
            }
            if !declared.contains(object_name.as_str()) {
                return Err(invalid(format!(
                    "data[{j}].objectName '{object_name}' is not a declared object"
                )));
            }
            let object_name = ObjectPath::parse(&object_name)
                .map_err(|e| invalid(format!("data[{j}].objectName '{object_name}' {e}")))?;
            data.push(SecretObjectData { object_name, key });
        }
        out.push(SecretObjectSpec {
            secret_name,
            secret_type: s
                .secret_type
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "Opaque".to_owned()),
            labels: s.labels.unwrap_or_default(),
            annotations: s.annotations.unwrap_or_default(),
            data,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HARBOR: &str = include_str!("../examples/harbor-spc.yaml");

    /// An SPC with the given parameters block (indented by 4) and objects (indented by 6).
    fn spc_with(params: &str, objects: &str) -> String {
        format!(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\n\
             metadata:\n  name: app\n  namespace: ns\nspec:\n  provider: openbao\n  parameters:\n\
             {params}    objects: |\n{objects}"
        )
    }

    fn with_objects(objects: &str) -> Result<SecretProviderClass, SpcError> {
        SecretProviderClass::from_yaml(&spc_with("    roleName: app\n", objects))
    }

    fn with_params(params: &str) -> Result<SecretProviderClass, SpcError> {
        SecretProviderClass::from_yaml(&spc_with(
            params,
            "      - objectName: a\n        secretPath: secret/data/a\n",
        ))
    }

    fn err(r: Result<SecretProviderClass, SpcError>) -> String {
        r.expect_err("must be rejected").to_string()
    }

    #[test]
    fn harbor_example_parses() {
        let spc = SecretProviderClass::from_yaml(HARBOR).expect("harbor SPC");
        assert_eq!(spc.name, "harbor-secrets");
        assert_eq!(spc.namespace.as_deref(), Some("harbor"));
        assert_eq!(spc.reference(), "harbor/harbor-secrets");
        assert_eq!(spc.provider, "openbao");
        assert_eq!(
            spc.params,
            OpenBaoParams {
                address: Some("http://127.0.0.1:8200".into()),
                role_name: "harbor".into(),
                auth_mount: "kubernetes".into(),
                audience: None,
                namespace: None,
                tls: TlsParams::default(),
            }
        );
        assert_eq!(spc.objects.len(), 1);
        let o = &spc.objects[0];
        assert_eq!(o.path.as_str(), "HARBOR_ADMIN_PASSWORD");
        assert_eq!(o.secret_path, "secret/data/harbor");
        assert_eq!(o.api_path(), "secret/data/harbor");
        assert_eq!(o.query(), None);
        assert_eq!(o.secret_key.as_deref(), Some("HARBOR_ADMIN_PASSWORD"));
        assert_eq!(o.mode, None);
        assert_eq!(o.encoding, Encoding::Utf8);
        assert_eq!(spc.secret_objects.len(), 1);
        let s = &spc.secret_objects[0];
        assert_eq!(s.secret_name, "harbor-admin");
        assert_eq!(s.secret_type, "Opaque");
        assert_eq!(s.data[0].object_name.as_str(), "HARBOR_ADMIN_PASSWORD");
        assert_eq!(s.data[0].key, "HARBOR_ADMIN_PASSWORD");
    }

    #[test]
    fn seed_verbatim_with_cluster_address_and_json_form() {
        let seed = HARBOR.replace(
            "http://127.0.0.1:8200",
            "http://openbao.openbao.svc.cluster.local:8200",
        );
        let spc = SecretProviderClass::from_yaml(&seed).expect("seed SPC");
        assert_eq!(
            spc.params.address.as_deref(),
            Some("http://openbao.openbao.svc.cluster.local:8200")
        );
        // JSON is YAML: an SPC as the apiserver returns it parses too.
        let json = r#"{"apiVersion":"secrets-store.csi.x-k8s.io/v1alpha1","kind":"SecretProviderClass",
            "metadata":{"name":"j","namespace":"n","uid":"x"},"spec":{"provider":"vault",
            "parameters":{"roleName":"r","objects":"- objectName: a\n  secretPath: kv/a\n"}},"status":{}}"#;
        let spc = SecretProviderClass::from_yaml(json).expect("json SPC");
        assert_eq!(spc.provider, "vault");
        assert_eq!(spc.objects[0].path.as_str(), "a");
    }

    #[test]
    fn header_errors() {
        assert!(
            err(SecretProviderClass::from_yaml("a: [b"))
                .contains("invalid SecretProviderClass YAML")
        );
        assert!(err(SecretProviderClass::from_yaml("a: [b")).contains("line"));
        let base = spc_with(
            "    roleName: app\n",
            "      - {objectName: a, secretPath: s/a}\n",
        );
        let e = err(SecretProviderClass::from_yaml(
            &base.replace("/v1\n", "/v2\n"),
        ));
        assert!(
            e.contains("apiVersion 'secrets-store.csi.x-k8s.io/v2'") && e.contains("ns/app"),
            "{e}"
        );
        let e = err(SecretProviderClass::from_yaml(
            &base.replace("kind: SecretProviderClass", "kind: Pod"),
        ));
        assert!(e.contains("kind 'Pod'"), "{e}");
        let e = err(SecretProviderClass::from_yaml(
            &base.replace("provider: openbao", "provider: azure"),
        ));
        assert!(
            e.contains("spec.provider 'azure'") && e.contains("ns/app"),
            "{e}"
        );
        let e = err(SecretProviderClass::from_yaml(
            &base.replace("  name: app\n", ""),
        ));
        assert!(e.contains("metadata.name"), "{e}");
        let no_params = "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\n\
                         metadata: {name: x}\nspec: {provider: openbao}\n";
        assert!(err(SecretProviderClass::from_yaml(no_params)).contains("spec.parameters not set"));
        // Types are checked with their location.
        let e = err(SecretProviderClass::from_yaml(
            &base.replace("  name: app", "  name: [app]"),
        ));
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn parameters_must_be_strings() {
        let e = err(with_params(
            "    roleName: app\n    vaultSkipTLSVerify: false\n",
        ));
        assert!(e.contains("'vaultSkipTLSVerify' must be a string"), "{e}");
    }

    #[test]
    fn role_name_rules() {
        let e = err(with_params("    vaultAddress: http://x\n"));
        assert!(
            e.contains("missing 'roleName' in SecretProviderClass 'ns/app'"),
            "{e}"
        );
        assert!(err(with_params("    roleName: ''\n")).contains("missing 'roleName'"));
        // A prefixed role name wins over roleName, as upstream.
        let p = with_params("    roleName: plain\n    vaultRoleName: prefixed\n").expect("ok");
        assert_eq!(p.params.role_name, "prefixed");
        let p = with_params("    baoRoleName: bao\n    vaultRoleName: vault\n").expect("ok");
        assert_eq!(p.params.role_name, "bao");
    }

    #[test]
    fn prefix_precedence_bao_openbao_vault() {
        let p = with_params(
            "    roleName: r\n    vaultAddress: http://vault\n    openbaoAddress: http://openbao\n    baoAddress: http://bao\n",
        )
        .expect("ok");
        assert_eq!(p.params.address.as_deref(), Some("http://bao"));
        let p = with_params(
            "    roleName: r\n    vaultAddress: http://vault\n    openbaoAddress: http://openbao\n",
        )
        .expect("ok");
        assert_eq!(p.params.address.as_deref(), Some("http://openbao"));
        let p = with_params("    roleName: r\n    vaultAddress: http://vault\n").expect("ok");
        assert_eq!(p.params.address.as_deref(), Some("http://vault"));
        let p = with_params("    roleName: r\n").expect("ok");
        assert_eq!(p.params.address, None);
        assert_eq!(p.params.auth_mount, "kubernetes");
        let p = with_params("    roleName: r\n    vaultAddress: ''\n").expect("ok");
        assert_eq!(p.params.address, None);
    }

    #[test]
    fn auth_mount_and_audience() {
        let p = with_params("    roleName: r\n    vaultKubernetesMountPath: /k8s-cluster1/\n    audience: openbao\n")
            .expect("ok");
        assert_eq!(p.params.auth_mount, "k8s-cluster1");
        assert_eq!(p.params.audience.as_deref(), Some("openbao"));
        let p = with_params("    roleName: r\n    baoAuthMountPath: jwt/prod\n").expect("ok");
        assert_eq!(p.params.auth_mount, "jwt/prod");
        let p = with_params("    roleName: r\n    baoAuthMountPath: ''\n").expect("ok");
        assert_eq!(p.params.auth_mount, "kubernetes");
        let e = err(with_params(
            "    roleName: r\n    vaultKubernetesMountPath: a\n    baoAuthMountPath: b\n",
        ));
        assert!(
            e.contains("cannot set both 'vaultKubernetesMountPath' and 'baoAuthMountPath'"),
            "{e}"
        );
        let e = err(with_params(
            "    roleName: r\n    vaultAuthMountPath: a/../b\n",
        ));
        assert!(e.contains("'vaultAuthMountPath'"), "{e}");
    }

    #[test]
    fn tls_and_namespace_parameters() {
        let p = with_params("    roleName: r\n").expect("ok");
        assert!(p.params.tls.is_default());
        assert_eq!(p.params.namespace, None);
        let p = with_params(
            "    roleName: r\n    vaultNamespace: /team-a/\n    vaultCACertPath: /etc/ca.pem\n    \
             vaultCADirectory: /etc/cas\n    vaultTLSServerName: bao.test\n    \
             vaultTLSClientCertPath: /c.pem\n    vaultTLSClientKeyPath: /k.pem\n    \
             vaultSkipTLSVerify: \"true\"\n",
        )
        .expect("ok");
        assert_eq!(p.params.namespace.as_deref(), Some("team-a"));
        assert_eq!(
            p.params.tls,
            TlsParams {
                ca_cert_path: Some("/etc/ca.pem".into()),
                ca_directory: Some("/etc/cas".into()),
                server_name: Some("bao.test".into()),
                client_cert_path: Some("/c.pem".into()),
                client_key_path: Some("/k.pem".into()),
                skip_verify: true,
            }
        );
        // First prefix present wins (bao, openbao, vault), even when it is empty.
        let p = with_params(
            "    roleName: r\n    vaultCACertPath: /v.pem\n    openbaoCACertPath: /o.pem\n    \
             baoNamespace: b\n    vaultNamespace: v\n",
        )
        .expect("ok");
        assert_eq!(p.params.tls.ca_cert_path.as_deref(), Some("/o.pem"));
        assert_eq!(p.params.namespace.as_deref(), Some("b"));
        let p =
            with_params("    roleName: r\n    baoCACertPath: ''\n    vaultCACertPath: /v.pem\n")
                .expect("ok");
        assert_eq!(p.params.tls.ca_cert_path, None);
        let p = with_params(
            "    roleName: r\n    baoSkipTLSVerify: \"false\"\n    vaultSkipTLSVerify: \"true\"\n",
        )
        .expect("ok");
        assert!(!p.params.tls.skip_verify);
        for ok in ["false", "False", "0", "f"] {
            let p = with_params(&format!(
                "    roleName: r\n    vaultSkipTLSVerify: \"{ok}\"\n"
            ))
            .expect("false");
            assert!(!p.params.tls.skip_verify);
        }
        let e = err(with_params(
            "    roleName: r\n    baoSkipTLSVerify: \"maybe\"\n",
        ));
        assert!(
            e.contains("'baoSkipTLSVerify' must be 'true' or 'false'"),
            "{e}"
        );
        // A lower-priority prefix must still parse.
        let e = err(with_params(
            "    roleName: r\n    baoSkipTLSVerify: \"false\"\n    vaultSkipTLSVerify: \"nope\"\n",
        ));
        assert!(e.contains("'vaultSkipTLSVerify'"), "{e}");
        let e = err(with_params(
            "    roleName: r\n    vaultTLSClientCertPath: /c.pem\n",
        ));
        assert!(
            e.contains("'vaultTLSClientCertPath' needs") && e.contains("TLSClientKeyPath"),
            "{e}"
        );
        let e = err(with_params(
            "    roleName: r\n    baoTLSClientKeyPath: /k.pem\n",
        ));
        assert!(e.contains("'baoTLSClientKeyPath' needs"), "{e}");
        let e = err(with_params("    roleName: r\n    baoNamespace: 'team a'\n"));
        assert!(
            e.contains("'baoNamespace'") && e.contains("namespace"),
            "{e}"
        );
        let e = err(with_params(
            "    roleName: r\n    baoTLSServerName: 'a b'\n",
        ));
        assert!(e.contains("'baoTLSServerName'"), "{e}");
        with_params("    roleName: r\n    vaultNamespace: ''\n").expect("empty is harmless");
    }

    #[test]
    fn objects_list_rules() {
        let no_objects = SecretProviderClass::from_yaml(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\n\
             metadata: {name: x}\nspec:\n  provider: openbao\n  parameters: {roleName: r}\n",
        );
        assert!(err(no_objects).contains("no objects"));
        assert!(err(with_objects("      []\n")).contains("no objects"));
        assert!(err(with_objects("\n")).contains("no objects"));
        let e = err(with_objects("      array:\n        - a\n"));
        assert!(e.contains("parameter 'objects'"), "{e}");
        let e = err(with_objects("      - objectName: [\n"));
        assert!(
            e.contains("parameter 'objects'") && e.contains("line"),
            "{e}"
        );
    }

    #[test]
    fn object_field_rules() {
        let e = err(with_objects(
            "      - objectName: a\n        secretPath: s/a\n        secretKye: k\n",
        ));
        assert!(
            e.contains("object 'a' has unknown field 'secretKye'"),
            "{e}"
        );
        let e = err(with_objects("      - secretPath: s/a\n"));
        assert!(e.contains("objects[0]") && e.contains("objectName"), "{e}");
        let e = err(with_objects("      - objectName: a\n"));
        assert!(
            e.contains("object 'a'") && e.contains("'secretPath' is missing"),
            "{e}"
        );
        let e = err(with_objects(
            "      - objectName: a\n        secretPath: ''\n",
        ));
        assert!(e.contains("'secretPath' is missing"), "{e}");
        let e = err(with_objects(
            "      - objectName: a\n        secretPath: secret/../sys/x\n",
        ));
        assert!(e.contains("'..'"), "{e}");
        let e = err(with_objects(
            "      - objectName: a\n        secretPath: s/a\n        encoding: rot13\n",
        ));
        assert!(e.contains("unknown encoding 'rot13' for object 'a'"), "{e}");
        let o = with_objects(
            "      - objectName: a\n        secretPath: pki/issue/x\n        method: put\n        secretArgs:\n          common_name: app.example.com\n          ttl: 1h\n          alt_names: [a, b]\n          max: 3\n",
        )
        .expect("PUT with secretArgs");
        assert_eq!(o.objects[0].method, ObjectMethod::Put);
        assert!(o.objects[0].method.is_write());
        let args = o.objects[0].secret_args.as_ref().expect("args");
        assert_eq!(
            serde_json::Value::Object(args.clone()),
            serde_json::json!({"common_name": "app.example.com", "ttl": "1h", "alt_names": ["a", "b"], "max": 3})
        );
        let o = with_objects(
            "      - objectName: a\n        secretPath: database/creds/app\n        method: POST\n",
        )
        .expect("POST without args");
        assert_eq!(o.objects[0].method, ObjectMethod::Post);
        assert_eq!(o.objects[0].secret_args, None);
        let e = err(with_objects(
            "      - objectName: a\n        secretPath: s/a\n        method: DELETE\n",
        ));
        assert!(
            e.contains("object 'a'") && e.contains("'method'") && e.contains("'DELETE'"),
            "{e}"
        );
        let e = err(with_objects(
            "      - objectName: a\n        secretPath: pki/issue/x\n        secretArgs:\n          common_name: x\n",
        ));
        assert!(
            e.contains("object 'a'") && e.contains("'secretArgs'") && e.contains("PUT or POST"),
            "{e}"
        );
        let e = err(with_objects(
            "      - objectName: a\n        secretPath: pki/issue/x\n        method: PUT\n        secretArgs: [x]\n",
        ));
        assert!(e.contains("'secretArgs' must be a mapping"), "{e}");
        let o = with_objects("      - objectName: a\n        secretPath: s/a\n        method: get\n        secretArgs: {}\n")
            .expect("GET and empty args are harmless");
        assert_eq!(o.objects[0].method, ObjectMethod::Get);
        assert_eq!(o.objects[0].path.as_str(), "a");
    }

    #[test]
    fn object_name_rules() {
        for (name, why) in [
            ("/abs", "absolute"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("./a", "'.'"),
            ("a/../b", "'..'"),
            ("..", "'..'"),
            ("''", "missing or empty"),
        ] {
            let e = err(with_objects(&format!(
                "      - objectName: {name}\n        secretPath: s/a\n"
            )));
            assert!(e.contains(why) && e.contains("objectName"), "{name}: {e}");
        }
        let long = "x".repeat(256);
        let e = err(with_objects(&format!(
            "      - objectName: {long}\n        secretPath: s/a\n"
        )));
        assert!(e.contains("longer than 255"), "{e}");
        let deep = vec!["y".repeat(200); 21].join("/");
        let e = err(with_objects(&format!(
            "      - objectName: {deep}\n        secretPath: s/a\n"
        )));
        assert!(e.contains("longer than 4096"), "{e}");
        assert_eq!(ObjectPath::parse("a\0b"), Err(InvalidObjectPath::Nul));
        let e = err(with_objects(
            "      - objectName: a\n        secretPath: s/a\n      - objectName: a\n        secretPath: s/b\n",
        ));
        assert!(
            e.contains("objectName 'a' is declared more than once"),
            "{e}"
        );
        let e = err(with_objects(
            "      - objectName: a/b\n        secretPath: s/a\n      - objectName: a\n        secretPath: s/b\n",
        ));
        assert!(
            e.contains("object 'a' is a file") && e.contains("'a/b'"),
            "{e}"
        );
        let ok = with_objects(
            "      - objectName: db/user\n        secretPath: s/a\n      - objectName: db/pass\n        secretPath: s/a\n      - objectName: 123\n        secretPath: s/b\n",
        )
        .expect("nested and numeric names");
        let p = &ok.objects[0].path;
        assert_eq!(p.components().collect::<Vec<_>>(), ["db", "user"]);
        assert_eq!(p.file_name(), "user");
        assert_eq!(p.ancestors().collect::<Vec<_>>(), ["db"]);
        assert_eq!(ok.objects[2].path.to_string(), "123");
    }

    fn mode_of(v: &str) -> Result<Option<u32>, String> {
        with_objects(&format!(
            "      - objectName: a\n        secretPath: s/a\n        filePermission: {v}\n"
        ))
        .map(|s| s.objects[0].mode)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn file_permission_forms() {
        assert_eq!(mode_of("0600"), Ok(Some(0o600)));
        assert_eq!(mode_of("\"0600\""), Ok(Some(0o600)));
        assert_eq!(mode_of("0o600"), Ok(Some(0o600)));
        assert_eq!(mode_of("420"), Ok(Some(0o644)));
        assert_eq!(mode_of("\"0440\""), Ok(Some(0o440)));
        assert_eq!(mode_of("\"420\""), Ok(Some(0o644)));
        assert_eq!(mode_of("0x1a4"), Ok(Some(0o644)));
        assert_eq!(mode_of("0"), Ok(None));
        assert_eq!(mode_of("~"), Ok(None));
        for bad in [
            "04755",
            "0o1777",
            "2048",
            "010000",
            "-1",
            "0689",
            "rw-r--r--",
            "6.5",
            "[1]",
        ] {
            let e = mode_of(bad).expect_err(bad);
            assert!(
                e.contains("object 'a'") && e.contains("filePermission"),
                "{bad}: {e}"
            );
        }
        assert!(mode_of("04755").expect_err("suid").contains("setuid"));
    }

    #[test]
    fn encodings_and_queries() {
        let s = with_objects(
            "      - {objectName: a, secretPath: /v1/secret/data/a?version=2, encoding: BASE64}\n\
             \x20     - {objectName: b, secretPath: v1/kv/b, encoding: Hex}\n\
             \x20     - {objectName: c, secretPath: kv/c, encoding: ''}\n\
             \x20     - {objectName: d, secretPath: /kv/d, encoding: UTF-8}\n",
        )
        .expect("ok");
        let enc: Vec<_> = s.objects.iter().map(|o| o.encoding).collect();
        assert_eq!(
            enc,
            [
                Encoding::Base64,
                Encoding::Hex,
                Encoding::Utf8,
                Encoding::Utf8
            ]
        );
        assert_eq!(s.objects[0].api_path(), "secret/data/a");
        assert_eq!(s.objects[0].query(), Some("version=2"));
        assert_eq!(s.objects[1].api_path(), "kv/b");
        assert_eq!(s.objects[3].api_path(), "kv/d");
        assert_eq!(Encoding::Base64.to_string(), "base64");
    }

    #[test]
    fn secret_objects_rules() {
        let base = spc_with(
            "    roleName: app\n",
            "      - {objectName: a, secretPath: s/a}\n",
        );
        let with =
            |so: &str| SecretProviderClass::from_yaml(&format!("{base}  secretObjects:\n{so}"));
        let ok = with(
            "    - secretName: s\n      type: kubernetes.io/tls\n      labels: {a: b}\n      annotations: {c: d}\n      data:\n        - {objectName: a, key: tls.crt}\n",
        )
        .expect("ok");
        assert_eq!(ok.secret_objects[0].secret_type, "kubernetes.io/tls");
        assert_eq!(
            ok.secret_objects[0].labels.get("a").map(String::as_str),
            Some("b")
        );
        let e = err(with(
            "    - secretName: s\n      data:\n        - {objectName: nope, key: k}\n",
        ));
        assert!(
            e.contains("secretObjects entry 's'") && e.contains("'nope' is not a declared object"),
            "{e}"
        );
        let e = err(with("    - secretName: s\n"));
        assert!(e.contains("data is missing"), "{e}");
        let e = err(with("    - data:\n        - {objectName: a, key: k}\n"));
        assert!(
            e.contains("secretObjects[0]") && e.contains("secretName"),
            "{e}"
        );
        let e = err(with(
            "    - secretName: s\n      data:\n        - {objectName: a}\n",
        ));
        assert!(e.contains("data[0].key"), "{e}");
    }
}
