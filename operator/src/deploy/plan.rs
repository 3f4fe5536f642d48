//! Automatic mode: the IoT Hub configurations (automatic deployments) a hierarchy needs.
//!
//! One configuration per (deployment, variant) that some device actually uses: the top-layer and
//! the lower-layer rendering of a deployment differ in their images, so they are separate
//! configurations selected by the device's layer tag.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Value, json};

use super::manifest::{ManifestError, Manifests, redacted};
use super::render::{Variant, render_content};
use crate::api::{DeviceType, EdgeHierarchySpec, Topology};
use crate::names::short_hash;
use crate::ownership::{HierarchyIdentity, configuration_labels, target_condition};

/// An IoT Hub configuration the hierarchy needs, ready to be created as is.
#[derive(Clone, PartialEq)]
pub struct DesiredConfiguration {
    /// Configuration id, `<hierarchy>-<deployment>-<hash8>`; a change of content, priority or
    /// target condition gives a new id (content is immutable in IoT Hub).
    pub id: String,
    /// Deployment name from the spec.
    pub deployment: String,
    /// Which rendering this is.
    pub variant: Variant,
    /// Whether the deployment is layered (its content uses the dotted form).
    pub layered: bool,
    /// The deployment's priority.
    pub priority: i32,
    /// Selects the devices by their ownership tags.
    pub target_condition: String,
    /// `{"modulesContent": ...}` rendered for the variant: the configuration's `content`.
    pub content: Value,
    /// The configuration's `labels`, naming the hierarchy that owns it.
    pub labels: BTreeMap<String, String>,
    /// Ids of the devices it is meant to reach, parents first (to compare with `targetedCount`).
    pub devices: Vec<String>,
}

impl fmt::Debug for DesiredConfiguration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesiredConfiguration")
            .field("id", &self.id)
            .field("deployment", &self.deployment)
            .field("variant", &self.variant)
            .field("layered", &self.layered)
            .field("priority", &self.priority)
            .field("target_condition", &self.target_condition)
            .field("content", &redacted(&self.content))
            .field("labels", &self.labels)
            .field("devices", &self.devices)
            .finish()
    }
}

/// Longest IoT Hub configuration id.
pub const MAX_CONFIGURATION_ID: usize = 128;

/// Characters IoT Hub accepts in a configuration id besides lower-case letters and digits.
const ID_PUNCTUATION: &str = "-:+%_#*?!(),=@;$'";

/// `<hierarchy>-<deployment>-<hash8>`: a valid IoT Hub configuration id for any names (lower
/// case; characters it does not accept become `-`; at most 128 characters, the names shortened
/// and the hash kept).
///
/// `hash_input` is everything that makes the configuration what it is (see
/// [`automatic_configurations`]): configuration content is immutable in IoT Hub, so a
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

/// JSON with object keys sorted at every level and no whitespace, so equal values hash equally
/// whatever order they were built in.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                // serde_json keeps insertion order when `preserve_order` is enabled anywhere in
                // the build, so insert in sorted order rather than rely on the map type.
                let mut out = serde_json::Map::new();
                for key in keys {
                    out.insert(key.clone(), sorted(&map[key]));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// The configurations of an Automatic-mode hierarchy, sorted by id.
///
/// For every Edge device (layer from `topology`), its base deployment and each of its layered
/// deployments is needed in the device's [`Variant`]. Each needed (deployment, variant) becomes
/// one [`DesiredConfiguration`]: content rendered with [`render_content`], the deployment's
/// priority, [`target_condition`] over the ownership tags, [`configuration_labels`], and the id
/// [`configuration_id`] over the canonical JSON of (hierarchy uid, variant, rendered content,
/// priority, target condition).
///
/// Preconditions: `topology` comes from `api::validate(spec)` and `manifests` from
/// [`super::resolve_manifests`]. A device whose layer or deployment is missing from them is
/// reported as an error naming it, not skipped.
pub fn automatic_configurations(
    owner: &HierarchyIdentity,
    spec: &EdgeHierarchySpec,
    topology: &Topology,
    manifests: &Manifests,
) -> Result<Vec<DesiredConfiguration>, ManifestError> {
    // Devices outside the topology (an invalid spec) must not vanish silently.
    if let Some(d) = spec
        .devices
        .iter()
        .find(|d| d.device_type == DeviceType::Edge && !topology.layer.contains_key(&d.id))
    {
        return Err(ManifestError {
            deployment: d.deployment.clone().unwrap_or_default(),
            path: format!("spec.devices[{}]", d.id),
            problem: format!("device {:?} has no layer in the topology", d.id),
            fix: "plan with the topology returned by validating the same spec".into(),
        });
    }
    let by_id: BTreeMap<&str, _> = spec.devices.iter().map(|d| (d.id.as_str(), d)).collect();
    // (deployment, variant) -> devices, parents first.
    let mut used: BTreeMap<(String, Variant), Vec<String>> = BTreeMap::new();
    for id in &topology.order {
        let Some(device) = by_id.get(id.as_str()) else {
            continue;
        };
        if device.device_type != DeviceType::Edge {
            continue;
        }
        let variant = Variant::for_layer(topology.layer.get(id).copied().unwrap_or(0));
        for name in device.deployment.iter().chain(&device.layered_deployments) {
            used.entry((name.clone(), variant))
                .or_default()
                .push(id.clone());
        }
    }
    let mut out = Vec::with_capacity(used.len());
    for ((name, variant), devices) in used {
        let Some(manifest) = manifests.get(&name) else {
            return Err(ManifestError {
                deployment: name.clone(),
                path: String::new(),
                problem: format!(
                    "device {:?} uses it but its manifest was not resolved",
                    devices[0]
                ),
                fix: "resolve and validate the manifests of the same spec before planning".into(),
            });
        };
        let content = render_content(&manifest.content, variant, &spec.edge);
        let target = target_condition(&owner.uid, &name, manifest.layered, variant);
        let hash_input = canonical_json(&json!([
            owner.uid,
            variant.as_str(),
            content,
            manifest.priority,
            target
        ]));
        let id = configuration_id(&owner.name, &name, &hash_input);
        out.push(DesiredConfiguration {
            labels: configuration_labels(owner, &name, variant, &id),
            id,
            deployment: name,
            variant,
            layered: manifest.layered,
            priority: manifest.priority,
            target_condition: target,
            content,
            devices,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
#[path = "tests/plan.rs"]
mod tests;
