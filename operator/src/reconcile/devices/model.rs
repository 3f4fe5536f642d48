//! The two sides `plan` compares: what the spec wants in the hub ([`DesiredDevice`]) and what the
//! hub holds ([`HubDevice`]). Both are plain data, independent of the REST client's models, so
//! planning is tested with fixtures alone.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::api::{AuthenticationType, DeviceType, EdgeHierarchySpec, Topology};
use crate::iothub::{AuthenticationType as HubAuth, DeviceStatus, Twin};
use crate::ownership::{HierarchyIdentity, Ownership, TAG, judge, ownership_tags};

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
    /// SAS keys the operator chose, written in the create so bundles need no read-back: an
    /// Edge device's are kept in its certificate Secret, a Leaf's are fresh each reconcile (a
    /// Leaf has no Secret to keep them in; they matter only when this reconcile creates it).
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
    /// The full `tags.edgeHierarchy` object, as `ownership::ownership_tags` makes it.
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
                owner_tags: ownership_tags(identity, d, layer)[TAG].take(),
            }
        })
        .collect()
}

/// Fresh SAS keys for every Leaf of a SymmetricKey spec: used only if this reconcile creates
/// the device, so its bundle carries them without a read of the hub (a registry operation
/// each, which a throttled hub cannot spare for hundreds of sensors).
pub fn new_leaf_keys(spec: &EdgeHierarchySpec) -> BTreeMap<String, SasKeys> {
    if spec.authentication != AuthenticationType::SymmetricKey {
        return BTreeMap::new();
    }
    spec.devices
        .iter()
        .filter(|d| d.device_type == DeviceType::Leaf)
        .map(|d| (d.id.clone(), SasKeys::generate()))
        .collect()
}

/// The SAS keys of the devices `created` names, as `desired` created them.
pub fn created_keys(desired: &[DesiredDevice], created: &[String]) -> BTreeMap<String, SasKeys> {
    desired
        .iter()
        .filter(|d| created.contains(&d.id))
        .filter_map(|d| match &d.auth {
            DesiredAuth::SymmetricKey { keys: Some(keys) } => Some((d.id.clone(), keys.clone())),
            _ => None,
        })
        .collect()
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
    pub auth: HubAuth,
    pub thumbprints: (Option<String>, Option<String>),
    pub device_scope: Option<String>,
    pub parent_scopes: Vec<String>,
    /// `tags.edgeHierarchy`, when present.
    pub owner_tags: Option<Value>,
}

impl HubDevice {
    /// The device as a twin query (`SELECT * FROM devices`) returns it.
    pub fn from_twin(twin: &Twin) -> Option<Self> {
        let thumbprints = twin.x509_thumbprint.as_ref();
        let thumbprint = |t: Option<&String>| t.filter(|t| !t.is_empty()).cloned();
        Some(Self {
            id: twin.device_id.clone()?,
            device_etag: twin.device_etag.clone(),
            twin_etag: twin.etag.clone(),
            enabled: twin.status != Some(DeviceStatus::Disabled),
            iot_edge: twin
                .capabilities
                .as_ref()
                .and_then(|c| c.iot_edge)
                .unwrap_or(false),
            auth: twin.authentication_type.unwrap_or(HubAuth::Sas),
            thumbprints: (
                thumbprint(thumbprints.and_then(|t| t.primary_thumbprint.as_ref())),
                thumbprint(thumbprints.and_then(|t| t.secondary_thumbprint.as_ref())),
            ),
            device_scope: twin.device_scope.clone().filter(|s| !s.is_empty()),
            parent_scopes: twin.parent_scopes.clone().unwrap_or_default(),
            owner_tags: twin
                .tags
                .as_ref()
                .and_then(|t| t.get(TAG))
                .cloned()
                .filter(|t| !t.is_null()),
        })
    }

    /// Whom the device belongs to.
    pub fn ownership(&self, identity: &HierarchyIdentity) -> Ownership {
        judge(self.owner_tags.as_ref(), &self.id, identity)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(authentication: &str) -> EdgeHierarchySpec {
        serde_yaml::from_str(&format!(
            "iotHub: {{connectionStringSecretRef: {{name: hub, key: cs}}}}\n\
             authentication: {authentication}\n\
             devices:\n\
             - {{id: gw}}\n\
             - {{id: sensor, parent: gw, type: Leaf}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn only_leaves_of_a_symmetric_key_spec_get_fresh_keys() {
        let keys = new_leaf_keys(&spec("SymmetricKey"));
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["sensor"]);
        assert_ne!(keys["sensor"].primary, keys["sensor"].secondary);
        assert!(new_leaf_keys(&spec("X509")).is_empty());
    }

    #[test]
    fn created_keys_name_only_created_devices_with_keys() {
        let spec = spec("SymmetricKey");
        let topology = crate::api::validate(&spec).unwrap();
        let identity = HierarchyIdentity::new("ns", "h", "u");
        let desired = desired_devices(
            &identity,
            &spec,
            &topology,
            &BTreeMap::new(),
            &new_leaf_keys(&spec),
        );
        // The gateway has no keys here (its certificate Secret would give them).
        let created = created_keys(&desired, &["gw".into(), "sensor".into()]);
        assert_eq!(created.keys().collect::<Vec<_>>(), ["sensor"]);
        assert!(created_keys(&desired, &["gw".into()]).is_empty());
    }
}
