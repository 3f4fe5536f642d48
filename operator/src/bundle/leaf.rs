//! Bundles of Leaf devices: what a device built on an Azure IoT device SDK needs to connect
//! through its parent IoT Edge device (a transparent gateway). A connection string with
//! `GatewayHostName` set to the parent, the root CA that the parent's edgeHub certificate chains
//! to, the X.509 identity files under X509 authentication, and a README for the SDKs.

use super::text::{comment_text, with_trailing_newline};
use super::{
    BundleError, BundleFile, BundleFileNames, DeviceAuth, PARENT_HOSTNAME_PLACEHOLDER, PUBLIC_MODE,
    SECRET_MODE, TRUST_BUNDLE_FILE, trust_bundle_pem,
};

/// File of a leaf bundle holding the device connection string.
pub const LEAF_CONNECTION_STRING_FILE: &str = "connection-string.txt";

/// Everything a leaf bundle is rendered from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafBundleInput {
    pub hierarchy: String,
    pub namespace: String,
    pub hub_hostname: String,
    pub device_id: String,
    /// The Edge device the leaf connects through; `None`: straight to the hub.
    pub parent_device_id: Option<String>,
    /// The parent's hostname; `None` with a parent: the connection string carries
    /// [`PARENT_HOSTNAME_PLACEHOLDER`] for the person installing it to replace.
    pub parent_hostname: Option<String>,
    pub auth: DeviceAuth,
    /// Every root the leaf must trust (the parent's edgeHub certificate chains to one).
    pub trust_bundle: Vec<String>,
}

/// The device connection string of a leaf: `HostName=...;DeviceId=...;SharedAccessKey=...`
/// (or `x509=true`), plus `;GatewayHostName=<parent>` behind a parent.
pub fn leaf_connection_string(input: &LeafBundleInput) -> String {
    let mut out = format!(
        "HostName={};DeviceId={}",
        input.hub_hostname, input.device_id
    );
    match &input.auth {
        DeviceAuth::SymmetricKey { shared_access_key } => {
            out.push_str(&format!(";SharedAccessKey={shared_access_key}"));
        }
        DeviceAuth::X509 { .. } => out.push_str(";x509=true"),
    }
    if input.parent_device_id.is_some() {
        let gateway = input
            .parent_hostname
            .as_deref()
            .unwrap_or(PARENT_HOSTNAME_PLACEHOLDER);
        out.push_str(&format!(";GatewayHostName={gateway}"));
    }
    out
}

/// Renders every file of a leaf's bundle, in a stable order.
pub fn leaf_bundle_files(input: &LeafBundleInput) -> Result<Vec<BundleFile>, BundleError> {
    let invalid = |field: &'static str, problem: &str| BundleError::InvalidInput {
        device: input.device_id.clone(),
        field,
        problem: problem.to_string(),
    };
    if input.device_id.is_empty() || input.device_id.chars().any(|c| c.is_control() || c == ';') {
        return Err(invalid(
            "deviceId",
            "is empty or contains ';' or a control character, which a connection string cannot carry",
        ));
    }
    if input.trust_bundle.iter().all(|root| root.trim().is_empty()) {
        return Err(invalid("trust bundle", "holds no root CA"));
    }
    if let DeviceAuth::SymmetricKey { shared_access_key } = &input.auth
        && (shared_access_key.is_empty()
            || shared_access_key
                .chars()
                .any(|c| c.is_control() || c == ';'))
    {
        return Err(invalid("shared access key", "is empty or not a base64 key"));
    }
    let names = BundleFileNames::for_device(&input.device_id);
    let mut files = vec![
        BundleFile {
            path: LEAF_CONNECTION_STRING_FILE.into(),
            contents: format!("{}\n", leaf_connection_string(input)).into_bytes(),
            mode: SECRET_MODE,
        },
        BundleFile {
            path: TRUST_BUNDLE_FILE.into(),
            contents: trust_bundle_pem(&input.trust_bundle).into_bytes(),
            mode: PUBLIC_MODE,
        },
        BundleFile {
            path: "README.md".into(),
            contents: render_leaf_readme(input, &names).into_bytes(),
            mode: PUBLIC_MODE,
        },
    ];
    if let DeviceAuth::X509 { identity } = &input.auth {
        files.push(BundleFile {
            path: names.identity_cert.clone(),
            contents: with_trailing_newline(&identity.cert_pem).into_bytes(),
            mode: PUBLIC_MODE,
        });
        files.push(BundleFile {
            path: names.identity_key.clone(),
            contents: identity.key.pem().as_bytes().to_vec(),
            mode: SECRET_MODE,
        });
    }
    Ok(files)
}

fn render_leaf_readme(input: &LeafBundleInput, names: &BundleFileNames) -> String {
    let id = comment_text(&input.device_id);
    let mut out = format!("# Leaf device `{id}`\n\n");
    out.push_str(&format!(
        "This bundle connects the device `{id}` of the hierarchy `{}` (namespace `{}`) to IoT Hub \
         `{}`",
        comment_text(&input.hierarchy),
        comment_text(&input.namespace),
        input.hub_hostname
    ));
    match &input.parent_device_id {
        Some(parent) => out.push_str(&format!(
            " through its parent IoT Edge device `{}`, which acts as a transparent gateway: the \
             device opens TLS to the parent's edgeHub (MQTT 8883, AMQP 5671 or HTTPS/WebSockets \
             443), and edgeHub passes its messages on.\n\n",
            comment_text(parent)
        )),
        None => out.push_str(" directly.\n\n"),
    }
    out.push_str("| File | Purpose |\n|---|---|\n");
    out.push_str(&format!(
        "| `{LEAF_CONNECTION_STRING_FILE}` | the device connection string{} |\n",
        if matches!(input.auth, DeviceAuth::SymmetricKey { .. }) {
            "; holds the SAS key: keep it secret"
        } else {
            ""
        }
    ));
    out.push_str(&format!(
        "| `{TRUST_BUNDLE_FILE}` | the root CA the parent's edgeHub certificate chains to |\n"
    ));
    if let DeviceAuth::X509 { .. } = input.auth {
        out.push_str(&format!(
            "| `{}` | identity certificate (its thumbprint is registered in IoT Hub) |\n\
             | `{}` | identity private key: keep it secret |\n",
            names.identity_cert, names.identity_key
        ));
    }
    out.push('\n');
    if input.parent_device_id.is_some() && input.parent_hostname.is_none() {
        out.push_str(&format!(
            "The hierarchy does not know the parent's hostname: replace `{PARENT_HOSTNAME_PLACEHOLDER}` \
             in the connection string with the parent's FQDN or IP address, the name its edgeHub \
             certificate is issued for (its `hostname` in config.toml).\n\n"
        ));
    }
    out.push_str(
        "## With the device SDKs\n\n\
         Give the SDK the connection string as it is: with `GatewayHostName` the SDK connects to \
         the parent instead of the hub, and authenticates to the hub through it. The TLS \
         connection to the parent is verified against the root CA in this bundle, not against \
         the public roots, so either add that file to the device's trust store (for example \
         `/usr/local/share/ca-certificates/` and `update-ca-certificates` on Debian), or give it \
         to the SDK:\n\n\
         - C#: `DeviceClient.CreateFromConnectionString(cs, TransportType.Mqtt)`; install the \
         root into the OS store (on Linux the .NET SDK reads it from there).\n\
         - Python (`azure-iot-device`): `IoTHubDeviceClient.create_from_connection_string(cs, \
         server_verification_cert=open(\"iotedge_config_cli_root.pem\").read())`.\n\
         - Node.js (`azure-iot-device`): `Client.fromConnectionString(cs, Mqtt)` then \
         `client.setOptions({ ca: fs.readFileSync(\"iotedge_config_cli_root.pem\", \"utf8\") })`.\n\
         - Java: `new DeviceClient(cs, IotHubClientProtocol.MQTT, options)` with \
         `ClientOptions.builder().sslContext(...)` built from the root, or the OS store.\n\
         - C (`azure-iot-sdk-c`): `IoTHubDeviceClient_LL_CreateFromConnectionString(cs, \
         MQTT_Protocol)` and `IoTHubDeviceClient_LL_SetOption(handle, OPTION_TRUSTED_CERT, \
         root_pem)`.\n\n",
    );
    if let DeviceAuth::X509 { .. } = input.auth {
        out.push_str(&format!(
            "With X.509 the connection string says `x509=true`; give the SDK the certificate \
             `{}` and key `{}` as well (C#: `DeviceAuthenticationWithX509Certificate`; Python: \
             `X509(cert_file, key_file)` with `create_from_x509_certificate(..., \
             gateway_hostname=...)`; C: `OPTION_X509_CERT` and `OPTION_X509_PRIVATE_KEY`).\n\n",
            names.identity_cert, names.identity_key
        ));
    }
    out.push_str(&format!(
        "Download this bundle again (after a key or certificate change the operator rewrites \
         it):\n\n```sh\nkubectl edgehierarchy bundle {} {} -n {} -o leaf.zip\n```\n",
        super::text::shell_word(&comment_text(&input.hierarchy)),
        super::text::shell_word(&id),
        super::text::shell_word(&comment_text(&input.namespace)),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(parent_hostname: Option<&str>) -> LeafBundleInput {
        LeafBundleInput {
            hierarchy: "plant".into(),
            namespace: "iot".into(),
            hub_hostname: "hub.azure-devices.net".into(),
            device_id: "sensor-7".into(),
            parent_device_id: Some("line-1".into()),
            parent_hostname: parent_hostname.map(str::to_string),
            auth: DeviceAuth::SymmetricKey {
                shared_access_key: "a2V5".into(),
            },
            trust_bundle: vec![
                "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----".into(),
            ],
        }
    }

    #[test]
    fn the_connection_string_names_the_parent_as_gateway() {
        assert_eq!(
            leaf_connection_string(&leaf(Some("10.0.0.5"))),
            "HostName=hub.azure-devices.net;DeviceId=sensor-7;SharedAccessKey=a2V5;GatewayHostName=10.0.0.5"
        );
        assert!(
            leaf_connection_string(&leaf(None)).ends_with(";GatewayHostName={{PARENT_HOSTNAME}}")
        );
        let top = LeafBundleInput {
            parent_device_id: None,
            ..leaf(None)
        };
        assert!(!leaf_connection_string(&top).contains("GatewayHostName"));
    }

    #[test]
    fn files_modes_and_refusals() {
        let files = leaf_bundle_files(&leaf(Some("gw"))).unwrap();
        let listing: Vec<(&str, u32)> = files.iter().map(|f| (f.path.as_str(), f.mode)).collect();
        assert_eq!(
            listing,
            [
                (LEAF_CONNECTION_STRING_FILE, SECRET_MODE),
                (TRUST_BUNDLE_FILE, PUBLIC_MODE),
                ("README.md", PUBLIC_MODE)
            ]
        );
        let readme = String::from_utf8(files[2].contents.clone()).unwrap();
        assert!(readme.contains("GatewayHostName"), "{readme}");
        assert!(!readme.contains("a2V5"));
        let bad = LeafBundleInput {
            auth: DeviceAuth::SymmetricKey {
                shared_access_key: "a;b".into(),
            },
            ..leaf(None)
        };
        let error = leaf_bundle_files(&bad).unwrap_err().to_string();
        assert!(
            error.contains("sensor-7") && error.contains("shared access key"),
            "{error}"
        );
        assert!(!error.contains("a;b"));
    }
}
