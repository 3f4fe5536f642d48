//! Ownership: how the operator marks what it owns in IoT Hub, and how it judges a hub object.
//!
//! Every device twin the operator creates gets `tags.edgeHierarchy = {namespace, name, uid,
//! layer, deployment, layered: {<key>: true}}`. Configurations select devices with target
//! conditions over exactly these tags, so [`ownership_tags`] and [`target_condition`] are the
//! two halves of one contract. Configurations carry labels naming the hierarchy, so the
//! operator can list its own. The hierarchy's `metadata.uid` decides: a name can be reused.
//!
//! Anyone with the hub's ServiceConnect right can write tags, so a tag naming the uid proves
//! nothing by itself. Each device's tags also carry `proof`, an HMAC over namespace, name, uid and
//! device id under a key only the operator holds ([`ProofKey`], kept in a Secret per namespace).
//! A device whose tags name the hierarchy without a valid proof is [`Ownership::Unproven`]: it is
//! a Conflict unless the hierarchy's own records (its status) show the operator registered it,
//! and it is never deleted on the strength of its tags alone.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use crate::api::{DeviceSpec, DeviceType, EdgeHierarchy};
use crate::deploy::Variant;
use crate::iothub::query::literal;
use crate::names::MANAGER;

/// Name of the twin tag the operator owns.
pub const TAG: &str = "edgeHierarchy";
// Configuration labels. IoT Hub takes label keys and values of at most 128 ASCII characters from
// letters, digits and `-:.+%_#*?!(),=@;'` (Azure IoT service SDKs, configuration labels), so they
// follow that rule rather than Kubernetes' `prefix/name` form.
/// Configuration label: namespace of the owning hierarchy.
pub const NAMESPACE_LABEL: &str = "edgeHierarchyNamespace";
/// Configuration label: name of the owning hierarchy (cut to 128 characters).
pub const NAME_LABEL: &str = "edgeHierarchyName";
/// Configuration label: uid of the owning hierarchy (what ownership is decided on).
pub const UID_LABEL: &str = "edgeHierarchyUid";
/// Configuration label: the deployment name from the spec.
pub const DEPLOYMENT_LABEL: &str = "edgeHierarchyDeployment";
/// Configuration label: `top` or `lower`.
pub const VARIANT_LABEL: &str = "edgeHierarchyVariant";
/// Configuration label: the operator that manages it.
pub const MANAGED_BY_LABEL: &str = "managedBy";
/// Configuration label: the operator's ownership proof (as the device tag [`PROOF_TAG`]).
pub const PROOF_LABEL: &str = "edgeHierarchyProof";
/// The uid label of configurations written by earlier versions (a key IoT Hub documents as
/// invalid, though it stored it): still recognised, so they are cleaned up, never orphaned.
const LEGACY_UID_LABEL: &str = "edgehierarchy.dev/uid";
/// Longest label value IoT Hub takes.
const MAX_LABEL_VALUE: usize = 128;

/// Twin tag (under [`TAG`]) holding the operator's ownership proof.
pub const PROOF_TAG: &str = "proof";
/// Bytes of a generated [`ProofKey`].
pub const PROOF_KEY_BYTES: usize = 32;
/// Hex digits of a proof kept in the tag: 128 bits, more than enough against guessing, and short
/// in the twin.
const PROOF_HEX_DIGITS: usize = 32;

/// The secret key behind ownership proofs. Never printed: `Debug` shows only that it is there.
#[derive(Clone, PartialEq, Eq)]
pub struct ProofKey(std::sync::Arc<[u8]>);

impl ProofKey {
    pub fn new(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProofKey(..)")
    }
}

/// Which hierarchy owns hub objects: its namespace, name and uid, as recorded in its marks, and
/// the key its ownership proofs are made with (`None`: no proof can be made or checked, so no
/// tagged device counts as proven).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HierarchyIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub key: Option<ProofKey>,
}

impl HierarchyIdentity {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            key: None,
        }
    }

    /// The identity of a hierarchy object read from the apiserver.
    pub fn of(hierarchy: &EdgeHierarchy) -> Self {
        Self::new(
            hierarchy.metadata.namespace.as_deref().unwrap_or_default(),
            hierarchy.metadata.name.as_deref().unwrap_or_default(),
            hierarchy.metadata.uid.as_deref().unwrap_or_default(),
        )
    }

    /// The same identity, making and checking proofs with `key`.
    pub fn with_key(mut self, key: Option<ProofKey>) -> Self {
        self.key = key;
        self
    }

    /// The proof this hierarchy's tags on `device_id` carry (`None` without a key).
    pub fn proof(&self, device_id: &str) -> Option<String> {
        self.proof_for(&self.uid, device_id)
    }

    /// The proof that `device_id` was tagged by the operator for the hierarchy with `uid` in
    /// this identity's namespace and name (`None` without a key).
    fn proof_for(&self, uid: &str, device_id: &str) -> Option<String> {
        let key = self.key.as_ref()?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes keys of any length");
        // NUL separates the parts: none of them can contain it, so no two tuples sign alike.
        for part in [
            "edgehierarchy.dev/ownership/v1",
            &self.namespace,
            &self.name,
            uid,
            device_id,
        ] {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        let digest = mac.finalize().into_bytes();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Some(hex[..PROOF_HEX_DIGITS].to_string())
    }
}

impl std::fmt::Display for HierarchyIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whom a hub device belongs to, judged from its ownership tags and their proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Tagged with this hierarchy's uid and a valid proof.
    Ours,
    /// Tagged with this hierarchy's uid, but the proof is missing or wrong: somebody other than
    /// the operator wrote the tags (or an operator version from before proofs did).
    Unproven,
    /// Tagged, with a valid proof, by an earlier hierarchy of the same namespace and name (one
    /// deleted with `deletion: Detach` and created again): the operator's own device.
    Earlier {
        uid: String,
    },
    Unowned,
    Other {
        namespace: String,
        name: String,
    },
}

/// Judges `tags.edgeHierarchy` of device `device_id` (absent or null: nobody's).
pub fn judge(
    owner_tags: Option<&Value>,
    device_id: &str,
    identity: &HierarchyIdentity,
) -> Ownership {
    let Some(tags) = owner_tags.filter(|t| !t.is_null()) else {
        return Ownership::Unowned;
    };
    let field = |k: &str| {
        tags.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (uid, proof) = (field("uid"), field(PROOF_TAG));
    let proven = |uid: &str| {
        // Compared in constant time: the proof is a MAC.
        identity.proof_for(uid, device_id).is_some_and(|want| {
            want.len() == proof.len()
                && want
                    .bytes()
                    .zip(proof.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    };
    if uid == identity.uid {
        if proven(&uid) {
            Ownership::Ours
        } else {
            Ownership::Unproven
        }
    } else if uid.is_empty() && field("name").is_empty() {
        Ownership::Unowned
    } else if field("namespace") == identity.namespace
        && field("name") == identity.name
        && proven(&uid)
    {
        Ownership::Earlier { uid }
    } else {
        Ownership::Other {
            namespace: field("namespace"),
            name: field("name"),
        }
    }
}

/// Key of a layered deployment under `tags.edgeHierarchy.layered`: the name with `-` mapped to
/// `_`, and `_` put before a leading digit, since a property in a query's path must be an
/// identifier (no `-`, not starting with a digit). Deployment names allow no `_`, so the mapping
/// is one-to-one.
pub fn layered_tag_key(deployment: &str) -> String {
    let key = deployment.replace('-', "_");
    if key.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{key}")
    } else {
        key
    }
}

/// The tags the operator writes on `device`'s twin: `{"edgeHierarchy": {...}}`.
///
/// `deployment` and `layered` are present only for an Edge device that has them, so a Leaf
/// device carries only the ownership fields. Write it with [`ownership_tags_patch`] so keys the
/// device no longer has are removed.
pub fn ownership_tags(identity: &HierarchyIdentity, device: &DeviceSpec, layer: u32) -> Value {
    let mut tag = Map::new();
    tag.insert("namespace".into(), json!(identity.namespace));
    tag.insert("name".into(), json!(identity.name));
    tag.insert("uid".into(), json!(identity.uid));
    if let Some(proof) = identity.proof_for(&identity.uid, &device.id) {
        tag.insert(PROOF_TAG.into(), json!(proof));
    }
    tag.insert("layer".into(), json!(layer));
    if device.device_type == DeviceType::Edge {
        if let Some(deployment) = &device.deployment {
            tag.insert("deployment".into(), json!(deployment));
        }
        let layered: Map<String, Value> = device
            .layered_deployments
            .iter()
            .map(|l| (layered_tag_key(l), Value::Bool(true)))
            .collect();
        if !layered.is_empty() {
            tag.insert("layered".into(), Value::Object(layered));
        }
    }
    json!({ TAG: tag })
}

/// The twin `tags` patch that turns `current_tags` (the twin's whole `tags`, or null) into
/// `desired` (from [`ownership_tags`]), or `None` when they already agree.
///
/// Twin updates merge: a key absent from a patch is kept, so every key under `edgeHierarchy` that
/// the device no longer has is set to `null` (which deletes it). Tags outside `edgeHierarchy`
/// belong to users and are never touched. Use `is_none()` as the drift test.
pub fn ownership_tags_patch(current_tags: &Value, desired: &Value) -> Option<Value> {
    let current = current_tags.get(TAG).unwrap_or(&Value::Null);
    let wanted = desired.get(TAG).unwrap_or(&Value::Null);
    diff(current, wanted).map(|patch| json!({ TAG: patch }))
}

/// The merge patch from `current` to `wanted`, `None` when equal. Objects are patched key by key.
fn diff(current: &Value, wanted: &Value) -> Option<Value> {
    match (current, wanted) {
        (Value::Object(have), Value::Object(want)) => {
            let mut patch = Map::new();
            for (key, value) in want {
                if let Some(p) = diff(have.get(key).unwrap_or(&Value::Null), value) {
                    patch.insert(key.clone(), p);
                }
            }
            for key in have.keys().filter(|k| !want.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        // Anything else differs as a whole: send the wanted value.
        _ if same_number_or_value(current, wanted) => None,
        _ => Some(wanted.clone()),
    }
}

/// Equality that ignores how a number is stored (a twin may echo `1` as `1.0`).
fn same_number_or_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The query condition selecting the devices whose ownership tags name hierarchy `uid`.
pub fn owned_devices_condition(uid: &str) -> String {
    format!("tags.{TAG}.uid = {}", literal(uid))
}

/// The target condition of the configuration carrying `deployment` for `variant` devices of the
/// hierarchy with `uid`. It matches exactly the twins whose [`ownership_tags`] name this
/// deployment (as base, or in `layered` when `layered` is true) and whose layer is 1 (Top) or
/// greater than 1 (Lower).
pub fn target_condition(uid: &str, deployment: &str, layered: bool, variant: Variant) -> String {
    let owner = format!("tags.{TAG}.uid={}", literal(uid));
    let selects = if layered {
        format!("tags.{TAG}.layered.{}=true", layered_tag_key(deployment))
    } else {
        format!("tags.{TAG}.deployment={}", literal(deployment))
    };
    let layer = match variant {
        Variant::Top => format!("tags.{TAG}.layer=1"),
        Variant::Lower => format!("tags.{TAG}.layer>1"),
    };
    format!("{owner} AND {selects} AND {layer}")
}

/// What a configuration's proof signs in place of a device id: device ids cannot contain `/`,
/// so no configuration proof is also a device's.
fn configuration_subject(id: &str) -> String {
    format!("configuration/{id}")
}

/// Labels of the configuration `id` the operator creates for `deployment` / `variant`.
pub fn configuration_labels(
    identity: &HierarchyIdentity,
    deployment: &str,
    variant: Variant,
    id: &str,
) -> BTreeMap<String, String> {
    let value = |v: &str| v.chars().take(MAX_LABEL_VALUE).collect::<String>();
    let proof = identity
        .proof(&configuration_subject(id))
        .map(|p| (PROOF_LABEL.to_string(), p));
    BTreeMap::from_iter(proof.into_iter().chain([
        (NAME_LABEL.to_string(), value(&identity.name)),
        (NAMESPACE_LABEL.to_string(), value(&identity.namespace)),
        (UID_LABEL.to_string(), value(&identity.uid)),
        (DEPLOYMENT_LABEL.to_string(), value(deployment)),
        (VARIANT_LABEL.to_string(), variant.as_str().to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
    ]))
}

/// Judges configuration `id` by its labels, as [`judge`] does a device by its tags.
pub fn judge_configuration(
    labels: Option<&BTreeMap<String, String>>,
    id: &str,
    identity: &HierarchyIdentity,
) -> Ownership {
    let Some(labels) = labels else {
        return Ownership::Unowned;
    };
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let uid = [UID_LABEL, LEGACY_UID_LABEL]
        .iter()
        .find_map(|k| labels.get(*k).cloned())
        .unwrap_or_default();
    let tags = json!({
        "namespace": label(NAMESPACE_LABEL),
        "name": label(NAME_LABEL),
        "uid": uid,
        PROOF_TAG: label(PROOF_LABEL),
    });
    judge(Some(&tags), &configuration_subject(id), identity)
}

#[cfg(test)]
mod tests;
