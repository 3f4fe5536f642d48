//! A leaf device (an Azure IoT device SDK client) from its bundle: the connection string, with
//! `GatewayHostName` naming the parent it connects through, and the root CA it verifies the
//! parent's edgeHub certificate with. Parsed here on its own, as an SDK would.

use std::collections::BTreeMap;

use rustls::pki_types::CertificateDer;

use crate::pki::pem_certificates;

/// Name of the connection string file in a leaf bundle.
pub const CONNECTION_STRING_FILE: &str = "connection-string.txt";
/// Name of the trust bundle file in a leaf bundle.
pub const TRUST_BUNDLE_FILE: &str = "iotedge_config_cli_root.pem";

/// What a leaf's bundle says.
#[derive(Clone, PartialEq, Eq)]
pub struct LeafConfig {
    pub hub_hostname: String,
    pub device_id: String,
    /// The SAS key (base64); `None` with `x509=true`.
    pub shared_access_key: Option<String>,
    /// The parent to connect through; `None`: straight to the hub.
    pub gateway_hostname: Option<String>,
    /// Roots the parent's certificate must chain to.
    pub trust_roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for LeafConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafConfig")
            .field("hub_hostname", &self.hub_hostname)
            .field("device_id", &self.device_id)
            .field("gateway_hostname", &self.gateway_hostname)
            .field("roots", &self.trust_roots.len())
            .finish()
    }
}

/// Whether a bundle is a leaf's (a connection string and no config.toml).
pub fn is_leaf_bundle(files: &BTreeMap<String, Vec<u8>>) -> bool {
    files.contains_key(CONNECTION_STRING_FILE) && !files.contains_key("config.toml")
}

/// Reads a leaf bundle; errors name the file and what is wrong.
pub fn parse_leaf_bundle(files: &BTreeMap<String, Vec<u8>>) -> Result<LeafConfig, String> {
    let text = files
        .get(CONNECTION_STRING_FILE)
        .and_then(|b| String::from_utf8(b.clone()).ok())
        .ok_or_else(|| format!("{CONNECTION_STRING_FILE} is missing or not UTF-8"))?;
    let mut fields = BTreeMap::new();
    for part in text.trim().split(';').filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{CONNECTION_STRING_FILE}: {part:?} is not a Key=Value pair"))?;
        fields.insert(key.to_string(), value.to_string());
    }
    let field = |name: &str| {
        fields
            .get(name)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| format!("{CONNECTION_STRING_FILE} has no {name}"))
    };
    let x509 = fields.get("x509").is_some_and(|v| v == "true");
    let shared_access_key = if x509 {
        None
    } else {
        Some(field("SharedAccessKey")?)
    };
    let gateway_hostname = fields.get("GatewayHostName").cloned();
    if gateway_hostname
        .as_deref()
        .is_some_and(|g| g.is_empty() || g.contains("{{"))
    {
        return Err(format!(
            "{CONNECTION_STRING_FILE}: GatewayHostName is {gateway_hostname:?}, not a hostname (replace the placeholder with the parent's hostname)"
        ));
    }
    let trust_roots = match files.get(TRUST_BUNDLE_FILE) {
        Some(pem) => pem_certificates(pem).map_err(|e| format!("{TRUST_BUNDLE_FILE}: {e}"))?,
        None if gateway_hostname.is_some() => {
            return Err(format!(
                "{TRUST_BUNDLE_FILE} is missing; without it the parent's certificate cannot be verified"
            ));
        }
        None => Vec::new(),
    };
    Ok(LeafConfig {
        hub_hostname: field("HostName")?,
        device_id: field("DeviceId")?,
        shared_access_key,
        gateway_hostname,
        trust_roots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(connection: &str, with_root: bool) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::from([(
            CONNECTION_STRING_FILE.to_string(),
            connection.as_bytes().to_vec(),
        )]);
        if with_root {
            let root = crate::fixtures::root_ca("leaf test root");
            files.insert(TRUST_BUNDLE_FILE.to_string(), root.cert_pem.into_bytes());
        }
        files
    }

    #[test]
    fn reads_a_gateway_connection_string() {
        let files = bundle(
            "HostName=hub.example;DeviceId=s1;SharedAccessKey=a2V5;GatewayHostName=gw.local\n",
            true,
        );
        assert!(is_leaf_bundle(&files));
        let leaf = parse_leaf_bundle(&files).unwrap();
        assert_eq!(leaf.device_id, "s1");
        assert_eq!(leaf.hub_hostname, "hub.example");
        assert_eq!(leaf.shared_access_key.as_deref(), Some("a2V5"));
        assert_eq!(leaf.gateway_hostname.as_deref(), Some("gw.local"));
        assert_eq!(leaf.trust_roots.len(), 1);
    }

    #[test]
    fn refuses_what_an_sdk_could_not_use() {
        let placeholder =
            "HostName=h;DeviceId=s1;SharedAccessKey=a2V5;GatewayHostName={{PARENT_HOSTNAME}}";
        let error = parse_leaf_bundle(&bundle(placeholder, true)).unwrap_err();
        assert!(error.contains("placeholder"), "{error}");
        let no_root = "HostName=h;DeviceId=s1;SharedAccessKey=a2V5;GatewayHostName=gw";
        let error = parse_leaf_bundle(&bundle(no_root, false)).unwrap_err();
        assert!(error.contains(TRUST_BUNDLE_FILE), "{error}");
        let error = parse_leaf_bundle(&bundle("HostName=h;DeviceId=s1", false)).unwrap_err();
        assert!(error.contains("SharedAccessKey"), "{error}");
    }
}
