//! The two sides `plan` compares: what the spec wants in the hub ([`DesiredDevice`]) and what the
//! hub holds ([`HubDevice`]). Both are plain data, independent of the REST client's models, so
//! planning is tested with fixtures alone.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::api::{AuthenticationType, DeviceType, EdgeHierarchy, EdgeHierarchySpec, Topology};

/// Twin tag under which the operator records ownership (see `deploy::ownership`).
pub use crate::deploy::ownership::TAG as OWNER_TAG;

/// Which hierarchy this is, as recorded in the ownership tags of its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HierarchyIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl HierarchyIdentity {
    /// The identity of a hierarchy object read from the apiserver.
    pub fn of(hierarchy: &EdgeHierarchy) -> Self {
        Self {
            namespace: hierarchy.metadata.namespace.clone().unwrap_or_default(),
            name: hierarchy.metadata.name.clone().unwrap_or_default(),
            uid: hierarchy.metadata.uid.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for HierarchyIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// SAS keys the operator chose for a device (so it knows them without reading them back).
#[derive(Clone, PartialEq, Eq)]
pub struct SasKeys {
    pub primary: String,
    pub secondary: String,
}

impl std::fmt::Debug for SasKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SasKeys(<redacted>)")
    }
}

impl SasKeys {
    /// Two random 256-bit keys, base64 as IoT Hub takes them.
    pub fn generate() -> Self {
        use base64::Engine;
        use rand::RngCore;
        let key = || {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        Self {
            primary: key(),
            secondary: key(),
        }
    }
}

/// How a device should authenticate, as far as the hub identity is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredAuth {
    /// SAS keys: the operator's own for Edge devices (written in the create, so bundles need
    /// no read-back), the hub's for Leaf devices.
    SymmetricKey { keys: Option<SasKeys> },
    /// Self-signed X.509: the thumbprints the device's identity certificates have. `None` while
    /// the certificate is not issued yet.
    X509 {
        thumbprints: Option<(String, Option<String>)>,
    },
}

/// One device as the spec wants it in the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredDevice {
    pub id: String,
    pub parent: Option<String>,
    pub layer: u32,
    pub device_type: DeviceType,
    pub auth: DesiredAuth,
    /// The full `tags.edgeHierarchy` object, as `deploy::ownership_tags` makes it.
    pub owner_tags: Value,
}

impl DesiredDevice {
    pub fn is_edge(&self) -> bool {
        self.device_type == DeviceType::Edge
    }
}

/// The devices of a valid spec, parents first.
pub fn desired_devices(
    identity: &HierarchyIdentity,
    spec: &EdgeHierarchySpec,
    topology: &Topology,
    thumbprints: &BTreeMap<String, (String, Option<String>)>,
    sas_keys: &BTreeMap<String, SasKeys>,
) -> Vec<DesiredDevice> {
    let by_id: BTreeMap<&str, &crate::api::DeviceSpec> =
        spec.devices.iter().map(|d| (d.id.as_str(), d)).collect();
    topology
        .order
        .iter()
        .filter_map(|id| by_id.get(id.as_str()).map(|d| (id, *d)))
        .map(|(id, d)| {
            let layer = topology.layer[id];
            DesiredDevice {
                id: id.clone(),
                parent: d.parent.clone(),
                layer,
                device_type: d.device_type,
                auth: match spec.authentication {
                    AuthenticationType::SymmetricKey => DesiredAuth::SymmetricKey {
                        keys: sas_keys.get(id).cloned(),
                    },
                    AuthenticationType::X509 => DesiredAuth::X509 {
                        thumbprints: thumbprints.get(id).cloned(),
                    },
                },
                owner_tags: crate::deploy::ownership_tags(
                    &identity.namespace,
                    &identity.name,
                    &identity.uid,
                    d,
                    layer,
                )[OWNER_TAG]
                    .take(),
            }
        })
        .collect()
}

/// Authentication type of a hub device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubAuthKind {
    Sas,
    SelfSigned,
    CertificateAuthority,
    None,
}

impl HubAuthKind {
    /// Parses the swagger's `authenticationType` / `authentication.type` values.
    pub fn parse(text: &str) -> Self {
        match text {
            "sas" => Self::Sas,
            "selfSigned" => Self::SelfSigned,
            "certificateAuthority" => Self::CertificateAuthority,
            _ => Self::None,
        }
    }
}

/// One device as the hub holds it (from a twin query).
#[derive(Debug, Clone, PartialEq)]
pub struct HubDevice {
    pub id: String,
    /// Etag of the device identity (`deviceEtag` in a twin).
    pub device_etag: Option<String>,
    /// Etag of the twin (tags and desired properties).
    pub twin_etag: Option<String>,
    pub enabled: bool,
    pub iot_edge: bool,
    pub auth: HubAuthKind,
    pub thumbprints: (Option<String>, Option<String>),
    pub device_scope: Option<String>,
    pub parent_scopes: Vec<String>,
    /// `tags.edgeHierarchy`, when present.
    pub owner_tags: Option<Value>,
}

impl HubDevice {
    /// Builds a device from a twin document as `SELECT * FROM devices` returns it.
    pub fn from_twin(twin: &Value) -> Option<Self> {
        let text = |key: &str| twin.get(key).and_then(Value::as_str).map(str::to_string);
        let thumbprint = |key: &str| {
            twin.pointer(&format!("/x509Thumbprint/{key}"))
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        };
        Some(Self {
            id: text("deviceId")?,
            device_etag: text("deviceEtag"),
            twin_etag: text("etag"),
            enabled: text("status").as_deref() != Some("disabled"),
            iot_edge: twin
                .pointer("/capabilities/iotEdge")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            auth: HubAuthKind::parse(text("authenticationType").as_deref().unwrap_or("sas")),
            thumbprints: (
                thumbprint("primaryThumbprint"),
                thumbprint("secondaryThumbprint"),
            ),
            device_scope: text("deviceScope").filter(|s| !s.is_empty()),
            parent_scopes: twin
                .get("parentScopes")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            owner_tags: twin
                .pointer(&format!("/tags/{OWNER_TAG}"))
                .cloned()
                .filter(|t| !t.is_null()),
        })
    }

    /// The `layer` recorded in the ownership tags, for ordering deletions.
    pub fn tagged_layer(&self) -> u32 {
        self.owner_tags
            .as_ref()
            .and_then(|t| t.get("layer"))
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32
    }
}

/// Whom a hub device belongs to, judged from its ownership tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    Ours,
    Unowned,
    Other { namespace: String, name: String },
}

pub fn ownership(device: &HubDevice, identity: &HierarchyIdentity) -> Ownership {
    let Some(tags) = &device.owner_tags else {
        return Ownership::Unowned;
    };
    let field = |k: &str| {
        tags.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if field("uid") == identity.uid {
        Ownership::Ours
    } else if field("uid").is_empty() && field("name").is_empty() {
        Ownership::Unowned
    } else {
        Ownership::Other {
            namespace: field("namespace"),
            name: field("name"),
        }
    }
}
