//! How the operator marks what it owns in the hub, and how its configurations find devices.
//!
//! Every device twin gets `tags.edgeHierarchy = {namespace, name, uid, layer, deployment,
//! layered: {<key>: true}}`. Configurations select devices with target conditions over exactly
//! these tags, so [`ownership_tags`] and [`target_condition`] are the two halves of one contract.
//! Configurations carry labels naming the hierarchy, so the operator can list its own.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::render::Variant;
use crate::api::{DeviceSpec, DeviceType};
use crate::names::{HIERARCHY_LABEL, MANAGER, short_hash};

/// Name of the twin tag the operator owns.
pub const TAG: &str = "edgeHierarchy";
/// Configuration label: namespace of the owning hierarchy.
pub const NAMESPACE_LABEL: &str = "edgehierarchy.dev/namespace";
/// Configuration label: uid of the owning hierarchy (what ownership is decided on).
pub const UID_LABEL: &str = "edgehierarchy.dev/uid";
/// Configuration label: the deployment name from the spec.
pub const DEPLOYMENT_LABEL: &str = "edgehierarchy.dev/deployment";
/// Configuration label: `top` or `lower`.
pub const VARIANT_LABEL: &str = "edgehierarchy.dev/variant";
/// Configuration label: the operator that manages it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Longest IoT Hub configuration id.
pub const MAX_CONFIGURATION_ID: usize = 128;

/// The hierarchy that owns hub objects: its namespace, name and uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HierarchyRef<'a> {
    /// Namespace of the `EdgeHierarchy`.
    pub namespace: &'a str,
    /// Name of the `EdgeHierarchy`.
    pub name: &'a str,
    /// `metadata.uid` of the `EdgeHierarchy`; ownership is decided on it, since a name can be reused.
    pub uid: &'a str,
}

/// Key of a layered deployment under `tags.edgeHierarchy.layered`: the name with `-` mapped to
/// `_` (a name in a query's property path cannot hold `-`). Deployment names allow no `_`, so the
/// mapping is one-to-one.
pub fn layered_tag_key(deployment: &str) -> String {
    deployment.replace('-', "_")
}

/// The tags the operator writes on `device`'s twin: `{"edgeHierarchy": {...}}`.
///
/// `deployment` and `layered` are present only for an Edge device that has them, so a Leaf
/// device carries only the ownership fields. Write it with [`ownership_tags_patch`] so keys the
/// device no longer has are removed.
pub fn ownership_tags(
    namespace: &str,
    name: &str,
    uid: &str,
    device: &DeviceSpec,
    layer: u32,
) -> Value {
    let mut tag = Map::new();
    tag.insert("namespace".into(), json!(namespace));
    tag.insert("name".into(), json!(name));
    tag.insert("uid".into(), json!(uid));
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

/// A string literal of the IoT Hub query language: single quotes, `'` doubled.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The target condition of the configuration carrying `deployment` for `variant` devices of the
/// hierarchy with `uid`. It matches exactly the twins whose [`ownership_tags`] name this
/// deployment (as base, or in `layered` when `layered` is true) and whose layer is 1 (Top) or
/// greater than 1 (Lower).
pub fn target_condition(uid: &str, deployment: &str, layered: bool, variant: Variant) -> String {
    let owner = format!("tags.{TAG}.uid={}", quote(uid));
    let selects = if layered {
        format!("tags.{TAG}.layered.{}=true", layered_tag_key(deployment))
    } else {
        format!("tags.{TAG}.deployment={}", quote(deployment))
    };
    let layer = match variant {
        Variant::Top => format!("tags.{TAG}.layer=1"),
        Variant::Lower => format!("tags.{TAG}.layer>1"),
    };
    format!("{owner} AND {selects} AND {layer}")
}

/// Characters IoT Hub accepts in a configuration id besides lower-case letters and digits.
const ID_PUNCTUATION: &str = "-:+%_#*?!(),=@;$'";

/// `<hierarchy>-<deployment>-<hash8>`: a valid IoT Hub configuration id for any names (lower
/// case; characters it does not accept become `-`; at most 128 characters, the names shortened
/// and the hash kept).
///
/// `hash_input` is everything that makes the configuration what it is (see
/// [`super::plan::automatic_configurations`]): configuration content is immutable in IoT Hub, so a
/// change of any of it must yield a new id.
pub fn configuration_id(hierarchy: &str, deployment: &str, hash_input: &str) -> String {
    let hash = short_hash(hash_input);
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || ID_PUNCTUATION.contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let mut stem = format!("{}-{}", clean(hierarchy), clean(deployment));
    let room = MAX_CONFIGURATION_ID - hash.len() - 1;
    if stem.len() > room {
        // Only ASCII is left after cleaning, so byte truncation is a character boundary.
        stem.truncate(room);
    }
    format!("{stem}-{hash}")
}

/// Labels of a configuration the operator creates for `deployment` / `variant`.
pub fn configuration_labels(
    owner: &HierarchyRef<'_>,
    deployment: &str,
    variant: Variant,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (HIERARCHY_LABEL.to_string(), owner.name.to_string()),
        (NAMESPACE_LABEL.to_string(), owner.namespace.to_string()),
        (UID_LABEL.to_string(), owner.uid.to_string()),
        (DEPLOYMENT_LABEL.to_string(), deployment.to_string()),
        (VARIANT_LABEL.to_string(), variant.as_str().to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
    ])
}

/// Whether a configuration's `labels` (the JSON object from the hub, or null) mark it as created
/// for the hierarchy with `uid`. Configurations without the label are never the operator's.
pub fn is_owned_configuration(labels: &Value, uid: &str) -> bool {
    labels.get(UID_LABEL).and_then(Value::as_str) == Some(uid)
}

#[cfg(test)]
#[path = "tests/ownership.rs"]
mod tests;
