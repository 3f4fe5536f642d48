//! HTTP clients of the IoT Hub emulator: the device-facing endpoint a device uses with its own
//! credentials (twins, reported properties, telemetry), and one read-only service query that
//! stands in for the person who knows the hierarchy's tree (to fill `{{PARENT_HOSTNAME}}`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use sha2::Sha256;

/// api-version of every call.
pub const API_VERSION: &str = "2021-04-12";
/// Lifetime of the SAS tokens the simulation signs.
pub const TOKEN_TTL_SECS: i64 = 3600;

/// Characters escaped in one path segment (`$edgeAgent` → `%24edgeAgent`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A percent-encoded path segment.
pub fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// A failed hub call. Holds no credential.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct HubError {
    /// HTTP status, when the hub answered.
    pub status: Option<u16>,
    /// `iothub-errorcode` header, when present.
    pub code: Option<String>,
    /// What happened.
    pub message: String,
}

/// Where the emulator listens and what its TLS certificate is signed by.
#[derive(Clone, Debug)]
pub struct HubEndpoint {
    /// PEM of the emulator's CA (`DIR/ca.crt`).
    pub ca_pem: Vec<u8>,
    /// The emulator's port (`DIR/port`), used when a host name carries none.
    pub port: u16,
}

impl HubEndpoint {
    /// Reads `DIR/ca.crt` and `DIR/port`.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let ca_pem = std::fs::read(dir.join("ca.crt")).with_context(|| {
            format!(
                "reading the emulator CA {}/ca.crt (is the emulator running with --dir {}?)",
                dir.display(),
                dir.display()
            )
        })?;
        let port = std::fs::read_to_string(dir.join("port"))
            .with_context(|| format!("reading {}/port", dir.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{}/port does not hold a port number", dir.display()))?;
        Ok(Self { ca_pem, port })
    }

    /// A client for `hub_host` (`host[:port]`, from the device's configuration): every host name
    /// resolves to 127.0.0.1 in the simulation. `identity_pem` (cert + key) adds TLS client
    /// authentication.
    pub fn client(&self, hub_host: &str, identity_pem: Option<&str>) -> Result<HubHttp, String> {
        let (host, port) = split_host_port(hub_host, self.port);
        let ca = reqwest::Certificate::from_pem(&self.ca_pem)
            .map_err(|e| format!("the emulator CA cannot be read ({e})"))?;
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(15))
            .resolve(&host, SocketAddr::from(([127, 0, 0, 1], port)));
        if let Some(pem) = identity_pem {
            let identity = reqwest::Identity::from_pem(pem.as_bytes())
                .map_err(|e| format!("the identity certificate cannot be used for TLS ({e})"))?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the hub client ({e})"))?;
        Ok(HubHttp {
            http,
            base_url: format!("https://{host}:{port}"),
            sr_host: hub_host.to_string(),
        })
    }
}

fn split_host_port(hub_host: &str, default_port: u16) -> (String, u16) {
    match hub_host.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => {
            (host.to_string(), port.parse().unwrap_or(default_port))
        }
        _ => (hub_host.to_string(), default_port),
    }
}

/// A device token `SharedAccessSignature sr=<host/devices/id>&sig=..&se=..` signed with the base64
/// device key.
pub fn device_token(
    hub_host: &str,
    device_id: &str,
    key_base64: &str,
    expiry: i64,
) -> Result<String, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_base64.trim())
        .map_err(|_| format!("the device key of {device_id} is not base64"))?;
    let resource =
        utf8_percent_encode(&format!("{hub_host}/devices/{device_id}"), NON_ALPHANUMERIC)
            .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key)
        .map_err(|_| "the device key is unusable".to_string())?;
    mac.update(format!("{resource}\n{expiry}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Ok(format!(
        "SharedAccessSignature sr={resource}&sig={}&se={expiry}",
        utf8_percent_encode(&sig, NON_ALPHANUMERIC)
    ))
}

/// A shared-access-policy token `SharedAccessSignature sr=<host>&sig=..&se=..&skn=<policy>`.
pub fn policy_token(
    hub_host: &str,
    policy: &str,
    key_base64: &str,
    expiry: i64,
) -> Result<String, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_base64.trim())
        .map_err(|_| format!("the key of policy {policy} is not base64"))?;
    let resource = utf8_percent_encode(hub_host, NON_ALPHANUMERIC).to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key)
        .map_err(|_| "the policy key is unusable".to_string())?;
    mac.update(format!("{resource}\n{expiry}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Ok(format!(
        "SharedAccessSignature sr={resource}&sig={}&se={expiry}&skn={policy}",
        utf8_percent_encode(&sig, NON_ALPHANUMERIC)
    ))
}

/// An HTTP client bound to one hub host (and, for X509 devices, one client certificate).
#[derive(Clone)]
pub struct HubHttp {
    http: reqwest::Client,
    base_url: String,
    sr_host: String,
}

impl fmt::Debug for HubHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubHttp")
            .field("base_url", &self.base_url)
            .finish()
    }
}

async fn answer(
    response: Result<reqwest::Response, reqwest::Error>,
    what: &str,
) -> Result<reqwest::Response, HubError> {
    let response = response.map_err(|e| HubError {
        status: None,
        code: None,
        message: format!("{what}: the hub cannot be reached ({e})"),
    })?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let code = response
        .headers()
        .get("iothub-errorcode")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    Err(HubError {
        status: Some(status),
        code: code.clone(),
        message: format!(
            "{what}: the hub answered {status} {}: {body}",
            code.unwrap_or_default()
        ),
    })
}

impl HubHttp {
    /// The `sr` host name of tokens for this hub.
    pub fn hub_host(&self) -> &str {
        &self.sr_host
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}?api-version={API_VERSION}", self.base_url)
    }

    fn with_auth(builder: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
        match token {
            Some(t) => builder.header("authorization", t),
            None => builder,
        }
    }

    /// `GET /devices/{id}/modules/{mid}/twin` → `{"desired", "reported"}`.
    pub async fn module_twin(
        &self,
        device_id: &str,
        module_id: &str,
        token: Option<&str>,
    ) -> Result<Value, HubError> {
        let path = format!(
            "/devices/{}/modules/{}/twin",
            segment(device_id),
            segment(module_id)
        );
        let what = format!("reading the {module_id} twin of {device_id}");
        let response = answer(
            Self::with_auth(self.http.get(self.url(&path)), token)
                .send()
                .await,
            &what,
        )
        .await?;
        response.json().await.map_err(|e| HubError {
            status: None,
            code: None,
            message: format!("{what}: the answer is not JSON ({e})"),
        })
    }

    /// `PATCH /devices/{id}/modules/{mid}/twin/reported` with a merge patch.
    pub async fn patch_reported(
        &self,
        device_id: &str,
        module_id: &str,
        patch: &Value,
        token: Option<&str>,
    ) -> Result<(), HubError> {
        let path = format!(
            "/devices/{}/modules/{}/twin/reported",
            segment(device_id),
            segment(module_id)
        );
        let what = format!("reporting {module_id} properties of {device_id}");
        answer(
            Self::with_auth(self.http.patch(self.url(&path)).json(patch), token)
                .send()
                .await,
            &what,
        )
        .await?;
        Ok(())
    }

    /// `POST /devices/{id}/modules/{mid}/messages/events` (or the device route when `module_id`
    /// is `None`).
    pub async fn send_event(
        &self,
        device_id: &str,
        module_id: Option<&str>,
        body: &Value,
        token: Option<&str>,
    ) -> Result<(), HubError> {
        let path = match module_id {
            Some(m) => format!(
                "/devices/{}/modules/{}/messages/events",
                segment(device_id),
                segment(m)
            ),
            None => format!("/devices/{}/messages/events", segment(device_id)),
        };
        let what = format!(
            "sending telemetry of {device_id}/{}",
            module_id.unwrap_or("-")
        );
        answer(
            Self::with_auth(self.http.post(self.url(&path)).json(body), token)
                .send()
                .await,
            &what,
        )
        .await?;
        Ok(())
    }
}

/// The hierarchy's tree as the hub records it: device id → parent device id.
pub type HubTree = BTreeMap<String, Option<String>>;

/// Reads the tree of every IoT Edge device (`deviceScope`, `parentScopes`) with a paged query,
/// signed with the owner connection string in `DIR/connection-string`. It reads only; the
/// simulation uses it to learn which device is whose parent when `config.toml` leaves
/// `{{PARENT_HOSTNAME}}` to be typed in.
pub async fn query_tree(
    endpoint: &HubEndpoint,
    emulator_dir: &Path,
    now: i64,
) -> anyhow::Result<HubTree> {
    let text = std::fs::read_to_string(emulator_dir.join("connection-string"))
        .with_context(|| format!("reading {}/connection-string", emulator_dir.display()))?;
    let mut host = None;
    let mut policy = None;
    let mut key = None;
    for pair in text.trim().split(';') {
        match pair.split_once('=') {
            Some(("HostName", v)) => host = Some(v.to_string()),
            Some(("SharedAccessKeyName", v)) => policy = Some(v.to_string()),
            Some(("SharedAccessKey", v)) => key = Some(v.to_string()),
            _ => {}
        }
    }
    let (Some(host), Some(policy), Some(key)) = (host, policy, key) else {
        anyhow::bail!(
            "{}/connection-string lacks HostName, SharedAccessKeyName or SharedAccessKey",
            emulator_dir.display()
        );
    };
    let client = endpoint.client(&host, None).map_err(anyhow::Error::msg)?;
    let token =
        policy_token(&host, &policy, &key, now + TOKEN_TTL_SECS).map_err(anyhow::Error::msg)?;
    let mut rows: Vec<Value> = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let mut request = client
            .http
            .post(client.url("/devices/query"))
            .header("authorization", &token)
            .json(&json!({"query": "SELECT deviceId, deviceScope, parentScopes FROM devices WHERE capabilities.iotEdge = true"}));
        if let Some(c) = &continuation {
            request = request.header("x-ms-continuation", c);
        }
        let response = answer(request.send().await, "querying the hub's device tree").await?;
        continuation = response
            .headers()
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let page: Vec<Value> = response
            .json()
            .await
            .context("the query answer is not a JSON array")?;
        rows.extend(page);
        if continuation.is_none() {
            break;
        }
    }
    Ok(tree_from_rows(&rows))
}

/// Maps query rows `{deviceId, deviceScope, parentScopes}` to device → parent device.
pub fn tree_from_rows(rows: &[Value]) -> HubTree {
    let scope_owner: BTreeMap<&str, &str> = rows
        .iter()
        .filter_map(|r| {
            Some((
                r.get("deviceScope")?.as_str()?,
                r.get("deviceId")?.as_str()?,
            ))
        })
        .collect();
    rows.iter()
        .filter_map(|r| {
            let id = r.get("deviceId")?.as_str()?;
            let parent = r
                .get("parentScopes")
                .and_then(Value::as_array)
                .and_then(|scopes| scopes.first())
                .and_then(Value::as_str)
                .and_then(|scope| scope_owner.get(scope))
                .map(|p| p.to_string());
            Some((id.to_string(), parent))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_maps_parent_scopes_to_device_ids() {
        let rows = vec![
            json!({"deviceId": "top-layer", "deviceScope": "ms-azure-iot-edge://top-layer-1", "parentScopes": []}),
            json!({"deviceId": "lower-layer", "deviceScope": "ms-azure-iot-edge://lower-layer-2", "parentScopes": ["ms-azure-iot-edge://top-layer-1"]}),
            json!({"deviceId": "orphan", "deviceScope": "ms-azure-iot-edge://orphan-3", "parentScopes": ["ms-azure-iot-edge://gone-9"]}),
        ];
        let tree = tree_from_rows(&rows);
        assert_eq!(tree["top-layer"], None);
        assert_eq!(tree["lower-layer"].as_deref(), Some("top-layer"));
        assert_eq!(tree["orphan"], None);
    }

    #[test]
    fn device_tokens_sign_the_encoded_resource() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let token = device_token("localhost:8443", "lower-layer", &key, 1_700_000_000).unwrap();
        let resource = "localhost%3A8443%2Fdevices%2Flower%2Dlayer";
        assert!(
            token.starts_with(&format!("SharedAccessSignature sr={resource}&sig=")),
            "{token}"
        );
        assert!(token.ends_with("&se=1700000000"));
        let mut mac = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
        mac.update(format!("{resource}\n1700000000").as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert!(token.contains(&utf8_percent_encode(&sig, NON_ALPHANUMERIC).to_string()));
        assert!(
            device_token("h", "d", "not base64!", 1)
                .unwrap_err()
                .contains("not base64")
        );
        let policy = policy_token("h:1", "iothubowner", &key, 5).unwrap();
        assert!(policy.ends_with("&se=5&skn=iothubowner"), "{policy}");
    }

    #[test]
    fn segments_and_host_ports() {
        assert_eq!(segment("$edgeAgent"), "%24edgeAgent");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(
            split_host_port("localhost:8443", 1),
            ("localhost".to_string(), 8443)
        );
        assert_eq!(
            split_host_port("hub.azure-devices.net", 9000),
            ("hub.azure-devices.net".to_string(), 9000)
        );
    }
}
