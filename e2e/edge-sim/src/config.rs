//! Parsing of a device's `config.toml` (aziot-edge 1.4/1.5 format), written independently of the
//! operator's renderer: this crate stands for a real device, which only sees the file.

use std::fmt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;
use toml::{Table, Value};

/// Stands for the device's hostname until `install.sh` (here: the simulation) fills it in.
pub const HOSTNAME_PLACEHOLDER: &str = "{{HOSTNAME}}";
/// Stands for the parent's hostname until `install.sh` fills it in.
pub const PARENT_HOSTNAME_PLACEHOLDER: &str = "{{PARENT_HOSTNAME}}";

/// What a device's `config.toml` says, as far as the simulation needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeConfig {
    /// `hostname` (may still be [`HOSTNAME_PLACEHOLDER`] before installation).
    pub hostname: Option<String>,
    /// `parent_hostname`: present on every device below the top layer.
    pub parent_hostname: Option<String>,
    /// `trust_bundle_cert` file URI.
    pub trust_bundle_cert: Option<String>,
    /// `[provisioning]`.
    pub provisioning: Provisioning,
    /// `[edge_ca]` `cert` and `pk` file URIs.
    pub edge_ca: Option<EdgeCaFiles>,
    /// `[agent.config] image`.
    pub agent_image: Option<String>,
}

/// The `[edge_ca]` file URIs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeCaFiles {
    /// Certificate chain (edge CA first).
    pub cert: String,
    /// Private key of the edge CA.
    pub pk: String,
}

/// How the device authenticates to IoT Hub (`[provisioning]`, `source = "manual"`).
#[derive(Clone, PartialEq, Eq)]
pub enum Provisioning {
    /// `connection_string = "HostName=..;DeviceId=..;SharedAccessKey=.."`.
    ConnectionString(ConnectionString),
    /// `iothub_hostname`, `device_id` and `[provisioning.authentication] method = "sas"` with
    /// `device_id_pk = { value = ".." }` (the form `iotedge_config_cli` writes).
    SharedKey {
        /// IoT Hub host name.
        iothub_hostname: String,
        /// Device id.
        device_id: String,
        /// Base64 device key.
        key: String,
    },
    /// `method = "x509"` with `identity_cert` and `identity_pk` file URIs.
    X509 {
        /// IoT Hub host name.
        iothub_hostname: String,
        /// Device id.
        device_id: String,
        /// Identity certificate file URI.
        identity_cert: String,
        /// Identity private key file URI.
        identity_pk: String,
    },
}

impl fmt::Debug for Provisioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectionString(c) => f.debug_tuple("ConnectionString").field(c).finish(),
            Self::SharedKey {
                iothub_hostname,
                device_id,
                ..
            } => f
                .debug_struct("SharedKey")
                .field("iothub_hostname", iothub_hostname)
                .field("device_id", device_id)
                .field("key", &"<redacted>")
                .finish(),
            Self::X509 {
                iothub_hostname,
                device_id,
                identity_cert,
                identity_pk,
            } => f
                .debug_struct("X509")
                .field("iothub_hostname", iothub_hostname)
                .field("device_id", device_id)
                .field("identity_cert", identity_cert)
                .field("identity_pk", identity_pk)
                .finish(),
        }
    }
}

impl Provisioning {
    /// The IoT Hub host name the device connects to.
    pub fn iothub_hostname(&self) -> &str {
        match self {
            Self::ConnectionString(c) => &c.host_name,
            Self::SharedKey {
                iothub_hostname, ..
            }
            | Self::X509 {
                iothub_hostname, ..
            } => iothub_hostname,
        }
    }

    /// The device id the device authenticates as.
    pub fn device_id(&self) -> &str {
        match self {
            Self::ConnectionString(c) => &c.device_id,
            Self::SharedKey { device_id, .. } | Self::X509 { device_id, .. } => device_id,
        }
    }

    /// The base64 SAS key, when the device uses one.
    pub fn shared_access_key(&self) -> Option<&str> {
        match self {
            Self::ConnectionString(c) => Some(&c.shared_access_key),
            Self::SharedKey { key, .. } => Some(key),
            Self::X509 { .. } => None,
        }
    }
}

/// A device connection string. Debug hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// `HostName`.
    pub host_name: String,
    /// `DeviceId`.
    pub device_id: String,
    /// `SharedAccessKey` (base64).
    pub shared_access_key: String,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("device_id", &self.device_id)
            .field("shared_access_key", &"<redacted>")
            .finish()
    }
}

/// Parses `HostName=..;DeviceId=..;SharedAccessKey=..`: pairs split on `;`, each on its first
/// `=`. Errors name the missing or unknown key but never echo the text (it holds the key).
pub fn parse_connection_string(text: &str) -> Result<ConnectionString, String> {
    let mut host_name = None;
    let mut device_id = None;
    let mut key = None;
    for pair in text.split(';').filter(|p| !p.trim().is_empty()) {
        let Some((name, value)) = pair.split_once('=') else {
            return Err("a part of the connection string has no '=' (expected Name=value pairs separated by ';')".into());
        };
        let slot = match name.trim() {
            "HostName" => &mut host_name,
            "DeviceId" => &mut device_id,
            "SharedAccessKey" => &mut key,
            // Allowed by the SDKs' parsers; the simulation has no use for them.
            "ModuleId" | "GatewayHostName" | "SharedAccessKeyName" | "SharedAccessSignature" => {
                continue;
            }
            other => {
                return Err(format!(
                    "unknown connection string key {other:?} (a device connection string has HostName, DeviceId and SharedAccessKey)"
                ));
            }
        };
        *slot = Some(value.trim().to_string());
    }
    let need = |value: Option<String>, name: &str| {
        value.filter(|v| !v.is_empty()).ok_or_else(|| {
            format!("the connection string has no {name} (expected HostName=<hub>;DeviceId=<id>;SharedAccessKey=<base64 key>)")
        })
    };
    Ok(ConnectionString {
        host_name: need(host_name, "HostName")?,
        device_id: need(device_id, "DeviceId")?,
        shared_access_key: need(key, "SharedAccessKey")?,
    })
}

fn string_at(table: &Table, key: &str, context: &str) -> Result<Option<String>, String> {
    match table.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "{context}{key} must be a string, found a {}",
            other.type_str()
        )),
    }
}

fn table_at<'a>(table: &'a Table, key: &str, context: &str) -> Result<Option<&'a Table>, String> {
    match table.get(key) {
        None => Ok(None),
        Some(Value::Table(t)) => Ok(Some(t)),
        Some(other) => Err(format!(
            "{context}{key} must be a table, found a {}",
            other.type_str()
        )),
    }
}

fn required(value: Option<String>, path: &str) -> Result<String, String> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("{path} is missing; add it to config.toml"))
}

/// Parses `config.toml`. Errors name the key (never a value: the file may hold a SAS key).
pub fn parse_config(text: &str) -> Result<EdgeConfig, String> {
    let root: Table = text.parse::<Table>().map_err(|e| {
        // toml's message quotes the offending line, which may hold the key: keep the position only.
        let position = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" at line {line}")
            })
            .unwrap_or_default();
        format!("config.toml is not valid TOML{position}")
    })?;
    let provisioning = table_at(&root, "provisioning", "")?
        .ok_or("[provisioning] is missing; add source = \"manual\" with a connection string or an x509 identity")?;
    let source = required(
        string_at(provisioning, "source", "provisioning.")?,
        "provisioning.source",
    )?;
    if source != "manual" {
        return Err(format!(
            "provisioning.source is {source:?}; the simulation supports \"manual\" provisioning only"
        ));
    }
    let provisioning = parse_provisioning(provisioning)?;
    let edge_ca = match table_at(&root, "edge_ca", "")? {
        None => None,
        Some(t) => Some(EdgeCaFiles {
            cert: required(string_at(t, "cert", "edge_ca.")?, "edge_ca.cert")?,
            pk: required(string_at(t, "pk", "edge_ca.")?, "edge_ca.pk")?,
        }),
    };
    let agent_image = match table_at(&root, "agent", "")? {
        None => None,
        Some(agent) => match table_at(agent, "config", "agent.")? {
            None => None,
            Some(config) => string_at(config, "image", "agent.config.")?,
        },
    };
    Ok(EdgeConfig {
        hostname: string_at(&root, "hostname", "")?,
        parent_hostname: string_at(&root, "parent_hostname", "")?,
        trust_bundle_cert: string_at(&root, "trust_bundle_cert", "")?,
        provisioning,
        edge_ca,
        agent_image,
    })
}

fn parse_provisioning(table: &Table) -> Result<Provisioning, String> {
    if let Some(cs) = string_at(table, "connection_string", "provisioning.")? {
        return parse_connection_string(&cs)
            .map(Provisioning::ConnectionString)
            .map_err(|e| format!("provisioning.connection_string: {e}"));
    }
    let iothub_hostname = required(
        string_at(table, "iothub_hostname", "provisioning.")?,
        "provisioning.iothub_hostname (or provisioning.connection_string)",
    )?;
    let device_id = required(
        string_at(table, "device_id", "provisioning.")?,
        "provisioning.device_id",
    )?;
    let auth = table_at(table, "authentication", "provisioning.")?
        .ok_or("[provisioning.authentication] is missing; set method = \"sas\" or \"x509\"")?;
    let method = required(
        string_at(auth, "method", "provisioning.authentication.")?,
        "provisioning.authentication.method",
    )?;
    match method.as_str() {
        "x509" => Ok(Provisioning::X509 {
            iothub_hostname,
            device_id,
            identity_cert: required(
                string_at(auth, "identity_cert", "provisioning.authentication.")?,
                "provisioning.authentication.identity_cert",
            )?,
            identity_pk: required(
                string_at(auth, "identity_pk", "provisioning.authentication.")?,
                "provisioning.authentication.identity_pk",
            )?,
        }),
        "sas" => {
            let pk = table_at(auth, "device_id_pk", "provisioning.authentication.")?
                .ok_or("provisioning.authentication.device_id_pk is missing; set device_id_pk = { value = \"<base64 key>\" }")?;
            let key = required(
                string_at(pk, "value", "provisioning.authentication.device_id_pk.")?,
                "provisioning.authentication.device_id_pk.value",
            )?;
            Ok(Provisioning::SharedKey {
                iothub_hostname,
                device_id,
                key,
            })
        }
        other => Err(format!(
            "provisioning.authentication.method {other:?} is not supported; use \"sas\" or \"x509\""
        )),
    }
}

/// Replaces the hostname placeholders as `install.sh` does with `sed` (textually, everywhere).
pub fn fill_placeholders(text: &str, hostname: &str, parent_hostname: Option<&str>) -> String {
    let filled = text.replace(HOSTNAME_PLACEHOLDER, hostname);
    match parent_hostname {
        Some(parent) => filled.replace(PARENT_HOSTNAME_PLACEHOLDER, parent),
        None => filled,
    }
}

/// The absolute path a `file://` URI names (`file:///var/aziot/certs/x.pem` →
/// `/var/aziot/certs/x.pem`), percent-decoded.
pub fn file_uri_path(uri: &str) -> Result<PathBuf, String> {
    let rest = uri
        .strip_prefix("file://")
        .ok_or_else(|| format!("{uri:?} is not a file:// URI (expected file:///absolute/path)"))?;
    let decoded = percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| format!("{uri:?} is not valid UTF-8 after percent-decoding"))?;
    if !decoded.starts_with('/') || decoded.split('/').any(|part| part == "..") {
        return Err(format!(
            "{uri:?} does not name an absolute path without '..' (expected file:///absolute/path)"
        ));
    }
    Ok(PathBuf::from(decoded.into_owned()))
}

/// The file name at the end of a `file://` URI: the bundle holds the file under this name.
pub fn file_uri_name(uri: &str) -> Result<String, String> {
    let path = file_uri_path(uri)?;
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| format!("{uri:?} names a folder, not a file"))
}

/// A Secret-safe folder name for a device id: lower-case alphanumerics and `-`, plus a short hash
/// when anything was changed, so distinct ids never share a folder.
pub fn device_slug(device_id: &str) -> String {
    let mut out = String::new();
    for c in device_id.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches('-');
    let mut slug: String = trimmed.chars().take(40).collect();
    if slug != device_id || slug.is_empty() {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(device_id.as_bytes());
        let hash: String = digest[..3].iter().map(|b| format!("{b:02x}")).collect();
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&hash);
    }
    slug
}

#[cfg(test)]
mod tests;
