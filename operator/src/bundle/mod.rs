//! Per-device config bundles (docs/architecture.md, "Certificates and bundles"): everything an
//! IoT Edge device needs to join its hierarchy, as files.
//!
//! [`bundle_files`] renders them from a [`BundleInput`]: `config.toml` (aziot-edge 1.4/1.5),
//! `install.sh`, `README.md`, the trust bundle, the edge CA chain and key, and in X509 mode the
//! identity certificate and key. The file names are those of the tutorial's `iotedge_config_cli`
//! zips (docs/architecture.md, "Certificates and bundles"), so instructions written for the tool still apply. [`write_zip`] and
//! [`write_tar_gz`] pack them with their modes (keys 0600); [`bundle_fingerprint`] tells whether
//! anything changed, for the bundle Secret's revision.
//!
//! The agent image is taken as given: the caller passes it already rewritten to
//! `$upstream:<port>/azureiotedge-agent:<tag>` below the top layer (the deploy module owns
//! `$upstream` rewriting, so images are rewritten by one rule everywhere).

mod archive;
mod config_merge;
mod config_toml;
mod est;
mod install_sh;
mod leaf;
mod readme;
mod text;

use std::fmt;

use sha2::{Digest, Sha256};

pub use archive::{ArchiveFormat, write_archive, write_tar_gz, write_zip};
pub use config_merge::{MERGE_PROGRAM_FILE, MERGED_MARKER, OPERATOR_OWNED, render_merge_program};
pub use config_toml::render_config_toml;
pub use est::{EST_TRUSTED_CA_FILE, EstBundle, bundle_files_est, est_file_names};
pub use install_sh::render_install_sh;
pub use leaf::{
    LEAF_CONNECTION_STRING_FILE, LeafBundleInput, leaf_bundle_files, leaf_connection_string,
};
pub use readme::render_readme;

use crate::deploy::RegistryLogin;
use crate::pki::{IssuedCertificate, PrivateKey};

/// An Edge device's aziot configuration in its bundle (installed as /etc/aziot/config.toml).
pub const CONFIG_FILE: &str = "config.toml";

/// Where `install.sh` puts certificates (owner `aziotcs`, 0644), as IoT Edge's docs lay out.
pub const CERT_DIR: &str = "/var/aziot/certs";
/// Where `install.sh` puts private keys (owner `aziotks`, 0600).
pub const SECRET_DIR: &str = "/var/aziot/secrets";
/// File of the trust bundle (every root CA the device must trust), named as the tutorial's tool
/// names it.
pub const TRUST_BUNDLE_FILE: &str = "iotedge_config_cli_root.pem";
/// Stands for the device's hostname in `config.toml` until `install.sh` fills it in.
pub const HOSTNAME_PLACEHOLDER: &str = "{{HOSTNAME}}";
/// Stands for the parent's hostname in `config.toml` until `install.sh` fills it in.
pub const PARENT_HOSTNAME_PLACEHOLDER: &str = "{{PARENT_HOSTNAME}}";

/// Mode of private keys and of `config.toml` (which holds the SAS key in SymmetricKey mode).
pub const SECRET_MODE: u32 = 0o600;
/// Mode of `install.sh`.
pub const SCRIPT_MODE: u32 = 0o755;
/// Mode of certificates and the README.
pub const PUBLIC_MODE: u32 = 0o644;

/// How the device authenticates to IoT Hub.
#[derive(Clone, PartialEq, Eq)]
pub enum DeviceAuth {
    /// A SAS key; `config.toml` carries the connection string
    /// `HostName=<hub>;DeviceId=<id>;SharedAccessKey=<key>`.
    SymmetricKey { shared_access_key: String },
    /// An X509 identity certificate registered by thumbprint.
    X509 { identity: IssuedCertificate },
}

impl fmt::Debug for DeviceAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SymmetricKey { .. } => f
                .debug_struct("SymmetricKey")
                .field("shared_access_key", &"<redacted>")
                .finish(),
            Self::X509 { identity } => f.debug_struct("X509").field("identity", identity).finish(),
        }
    }
}

/// Everything a device bundle is rendered from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleInput {
    /// Name of the `EdgeHierarchy` (README and comments).
    pub hierarchy: String,
    /// Namespace of the `EdgeHierarchy` (README: how to download the bundle again).
    pub namespace: String,
    /// IoT Hub host name, e.g. `my-hub.azure-devices.net`.
    pub hub_hostname: String,
    /// The device id.
    pub device_id: String,
    /// 1 for a top-layer device, 2 for its children, and so on.
    pub layer: u32,
    /// The parent device's id; `None` on the top layer.
    pub parent_device_id: Option<String>,
    /// The device's hostname (FQDN or IP); `None`: `install.sh` asks for it.
    pub hostname: Option<String>,
    /// The parent's hostname; `None` below the top layer: `install.sh` asks for it.
    pub parent_hostname: Option<String>,
    /// IoT Hub credentials.
    pub auth: DeviceAuth,
    /// PEM of every root CA the device trusts; during a root rotation both old and new.
    pub trust_bundle: Vec<String>,
    /// The device's edge CA (its `chain_pem` ends with the root).
    pub edge_ca: IssuedCertificate,
    /// The edgeAgent image `aziot-edged` starts first, already rewritten to
    /// `$upstream:<port>/...` below the top layer.
    pub agent_image: String,
    /// Port of the parent's API proxy (README and the `iotedge check` hint).
    pub upstream_port: u16,
    /// Registry login for pulling `agent_image` (`[agent.config.auth]`), its address already
    /// the one this device must use (see `deploy::agent_server_address`).
    pub agent_auth: Option<RegistryLogin>,
}

impl BundleInput {
    /// Whether the device has no parent.
    pub fn is_top_layer(&self) -> bool {
        self.parent_device_id.is_none()
    }

    /// File names inside the bundle for this device.
    pub fn files(&self) -> BundleFileNames {
        BundleFileNames::for_device(&self.device_id)
    }
}

/// One file of a bundle. `Debug` shows path, mode and size, never the contents.
#[derive(Clone, PartialEq, Eq)]
pub struct BundleFile {
    /// Path inside the archive (no directory: entries sit at the archive root, as in the
    /// tutorial's zips).
    pub path: String,
    /// Bytes of the file.
    pub contents: Vec<u8>,
    /// Unix permission bits.
    pub mode: u32,
}

impl fmt::Debug for BundleFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("bytes", &self.contents.len())
            .finish()
    }
}

/// Names of a device's files inside its bundle, as the tutorial's tool names them
/// (`<id>.cert.pem`, `<id>.full-chain.cert.pem`, `<id>.key.pem`, `<id>.hub-auth.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleFileNames {
    /// The edge CA certificate alone.
    pub edge_ca_cert: String,
    /// The edge CA certificate and the root: `[edge_ca].cert`.
    pub edge_ca_full_chain: String,
    /// The edge CA key: `[edge_ca].pk`.
    pub edge_ca_key: String,
    /// X509 identity certificate: `[provisioning.authentication].identity_cert`.
    pub identity_cert: String,
    /// X509 identity key: `[provisioning.authentication].identity_pk`.
    pub identity_key: String,
}

impl BundleFileNames {
    /// File names for `device_id`. The id itself is the stem when it is a plain file name
    /// (letters, digits, `.`, `_`, `-`), as with the tool; ids with other IoT Hub characters
    /// (`#`, `?`, `*`, `'`, ...) would be misread in URIs, shells and Secret keys, so they use
    /// a slug plus a hash of the exact id instead.
    pub fn for_device(device_id: &str) -> Self {
        let stem = file_stem(device_id);
        Self {
            edge_ca_cert: format!("{stem}.cert.pem"),
            edge_ca_full_chain: format!("{stem}.full-chain.cert.pem"),
            edge_ca_key: format!("{stem}.key.pem"),
            identity_cert: format!("{stem}.hub-auth.cert.pem"),
            identity_key: format!("{stem}.hub-auth.key.pem"),
        }
    }
}

fn file_stem(device_id: &str) -> String {
    let plain = !device_id.is_empty()
        && !device_id.starts_with(['.', '-'])
        && device_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        device_id.to_string()
    } else {
        let slug = crate::names::slug(device_id, 40);
        let slug = if slug.is_empty() { "device" } else { &slug };
        format!("{slug}-{}", crate::names::short_hash(device_id))
    }
}

/// Mode of a bundle file from its name: keys and `config.toml` 0600, `install.sh` 0755, the
/// rest 0644. For rebuilding an archive from a Secret, which stores no modes.
pub fn mode_for_path(path: &str) -> u32 {
    if path.ends_with(".key.pem") || path == CONFIG_FILE || path == LEAF_CONNECTION_STRING_FILE {
        SECRET_MODE
    } else if path.ends_with(".sh") {
        SCRIPT_MODE
    } else {
        PUBLIC_MODE
    }
}

/// Why a bundle cannot be rendered. Messages name the field and never carry secrets.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BundleError {
    #[error("device {device:?}: {field} {problem}")]
    InvalidInput {
        device: String,
        field: &'static str,
        problem: String,
    },
    #[error("writing the archive failed: {0}")]
    Archive(String),
}

/// Renders every file of the device's bundle, in a stable order.
pub fn bundle_files(input: &BundleInput) -> Result<Vec<BundleFile>, BundleError> {
    validate(input)?;
    let names = input.files();
    let mut files = vec![
        BundleFile {
            path: CONFIG_FILE.into(),
            contents: render_config_toml(input).into_bytes(),
            mode: SECRET_MODE,
        },
        BundleFile {
            path: "install.sh".into(),
            contents: render_install_sh(input).into_bytes(),
            mode: SCRIPT_MODE,
        },
        BundleFile {
            path: MERGE_PROGRAM_FILE.into(),
            contents: render_merge_program().into_bytes(),
            mode: PUBLIC_MODE,
        },
        BundleFile {
            path: "README.md".into(),
            contents: render_readme(input).into_bytes(),
            mode: PUBLIC_MODE,
        },
        BundleFile {
            path: TRUST_BUNDLE_FILE.into(),
            contents: trust_bundle_pem(&input.trust_bundle).into_bytes(),
            mode: PUBLIC_MODE,
        },
        BundleFile {
            path: names.edge_ca_cert.clone(),
            contents: input.edge_ca.cert_pem.clone().into_bytes(),
            mode: PUBLIC_MODE,
        },
        BundleFile {
            path: names.edge_ca_full_chain.clone(),
            contents: input.edge_ca.chain_pem.clone().into_bytes(),
            mode: PUBLIC_MODE,
        },
        key_file(&names.edge_ca_key, &input.edge_ca.key),
    ];
    if let DeviceAuth::X509 { identity } = &input.auth {
        files.push(BundleFile {
            path: names.identity_cert.clone(),
            contents: identity.cert_pem.clone().into_bytes(),
            mode: PUBLIC_MODE,
        });
        files.push(key_file(&names.identity_key, &identity.key));
    }
    Ok(files)
}

fn key_file(path: &str, key: &PrivateKey) -> BundleFile {
    BundleFile {
        path: path.to_string(),
        contents: key.pem().as_bytes().to_vec(),
        mode: SECRET_MODE,
    }
}

/// The roots, each ending in one newline, in the given order (no duplicates).
fn trust_bundle_pem(roots: &[String]) -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for root in roots {
        let root = text::with_trailing_newline(root);
        if !seen.contains(&root) {
            out.push_str(&root);
            seen.push(root);
        }
    }
    out
}

/// SHA-256 (hex) over paths, modes and contents, independent of file order: equal fingerprints
/// mean the device would install the same thing, so the bundle revision stays.
pub fn bundle_fingerprint(files: &[BundleFile]) -> String {
    let mut sorted: Vec<&BundleFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut hash = Sha256::new();
    for file in sorted {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        hash.update((file.path.len() as u64).to_be_bytes());
        hash.update(file.path.as_bytes());
        hash.update(file.mode.to_be_bytes());
        hash.update((file.contents.len() as u64).to_be_bytes());
        hash.update(&file.contents);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn validate(input: &BundleInput) -> Result<(), BundleError> {
    let invalid = |field: &'static str, problem: String| BundleError::InvalidInput {
        device: input.device_id.clone(),
        field,
        problem,
    };
    if input.device_id.is_empty() {
        return Err(invalid("deviceId", "is empty".into()));
    }
    if input.device_id.chars().any(|c| c.is_control() || c == ';') {
        return Err(invalid(
            "deviceId",
            "contains ';' or a control character, which a connection string cannot carry".into(),
        ));
    }
    if !text::is_hostname(&input.hub_hostname, 253) {
        return Err(invalid(
            "iotHub host name",
            format!("{:?} is not a host name", input.hub_hostname),
        ));
    }
    for (field, value) in [
        ("hostname", &input.hostname),
        ("parent hostname", &input.parent_hostname),
    ] {
        if let Some(value) = value
            && !text::is_hostname(value, text::MAX_DEVICE_HOSTNAME)
        {
            return Err(invalid(
                field,
                format!(
                    "{value:?} is not a usable hostname: use an FQDN or IP address of under 64 characters (letters, digits, '.', '-', ':')"
                ),
            ));
        }
    }
    if input.is_top_layer() && input.parent_hostname.is_some() {
        return Err(invalid(
            "parent hostname",
            "is set on a device without a parent".into(),
        ));
    }
    if input.trust_bundle.iter().all(|root| root.trim().is_empty()) {
        return Err(invalid("trust bundle", "holds no root CA".into()));
    }
    if input.agent_image.trim().is_empty() || input.agent_image.chars().any(char::is_control) {
        return Err(invalid(
            "agent image",
            "is empty or contains control characters".into(),
        ));
    }
    if let Some(login) = &input.agent_auth {
        for (field, value) in [
            ("agent auth server address", login.address.as_str()),
            ("agent auth username", login.username.as_str()),
            ("agent auth password", login.password.expose()),
        ] {
            if value.is_empty() || value.chars().any(char::is_control) {
                return Err(invalid(
                    field,
                    "is empty or contains control characters".into(),
                ));
            }
        }
    }
    if let DeviceAuth::SymmetricKey { shared_access_key } = &input.auth
        && (shared_access_key.is_empty()
            || shared_access_key
                .chars()
                .any(|c| c.is_control() || c == ';' || c == '"'))
    {
        return Err(invalid(
            "shared access key",
            "is empty or not a base64 key".into(),
        ));
    }
    Ok(())
}
