//! PerDevice mode: one manifest per device, the way IoT Hub would combine its deployments.
//!
//! IoT Hub applies one standard deployment to a device and merges its layered deployments on top:
//! a layered entry wins over what is already there when its priority is higher. Merging here
//! follows the same rule so both modes put the same modules on a device; the merged manifest is
//! also what health and the gateway check compare against.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::manifest::{
    DESIRED, DESIRED_SECTION_PREFIX, EDGE_AGENT, EDGE_HUB, LAYERED_CREDENTIAL_PREFIX,
    LAYERED_MODULE_PREFIX, LAYERED_ROUTE_PREFIX, ManifestError, Manifests,
};
use super::render::{Variant, render_content};
use crate::api::{DeviceSpec, EdgeRuntimeSpec};

/// Who set an entry, to decide whether a later deployment may replace it.
#[derive(Clone, Copy)]
struct Owner {
    priority: i32,
    base: bool,
}

impl Owner {
    /// Higher priority wins. On a tie a layered deployment applied later wins over an earlier
    /// layered one, but never over the base (IoT Hub requires layers to rank strictly above it).
    fn yields_to(self, challenger: i32) -> bool {
        challenger > self.priority || (challenger == self.priority && !self.base)
    }
}

/// The manifest to apply to `device` in `layer` with `applyConfigurationContent`:
/// `{"modulesContent": {...}}` with full `properties.desired` twins only.
///
/// Its base deployment rendered for the layer ([`render_content`]), then its layered deployments,
/// rendered the same way, in ascending priority (ties in the order the device lists them), each
/// entry winning as [`Owner::yields_to`] decides: `properties.desired.modules.<m>` replaces module
/// `m`; `...registryCredentials.<n>` a credential; `$edgeHub` `properties.desired.routes.<r>` a
/// route; a module twin's `properties.desired` replaces that twin and
/// `properties.desired.<section>` sets one (dotted, nested) section of it.
///
/// Errors name the device when it has no base deployment or a deployment is not in `manifests`.
pub fn merged_manifest(
    device: &DeviceSpec,
    layer: u32,
    edge: &EdgeRuntimeSpec,
    manifests: &Manifests,
) -> Result<Value, ManifestError> {
    let missing = |name: &str, problem: String| ManifestError {
        deployment: name.to_string(),
        path: format!("spec.devices[{}]", device.id),
        problem,
        fix: "resolve and validate the manifests of the same spec before merging".into(),
    };
    let Some(base_name) = device.deployment.as_deref() else {
        return Err(ManifestError {
            deployment: String::new(),
            path: format!("spec.devices[{}].deployment", device.id),
            problem: format!("device {:?} has no base deployment to apply", device.id),
            fix: "name the device's deployment".into(),
        });
    };
    let base = manifests.get(base_name).ok_or_else(|| {
        missing(
            base_name,
            format!("device {:?} uses it but it is not resolved", device.id),
        )
    })?;
    let variant = Variant::for_layer(layer);
    let mut merged = render_content(&base.content, variant, edge);
    let modules = merged
        .as_object_mut()
        .and_then(|c| c.get_mut("modulesContent"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| missing(base_name, "its content has no modulesContent".into()))?;

    let base_owner = Owner {
        priority: base.priority,
        base: true,
    };
    let mut owners = base_owners(modules, base_owner);

    let mut layers = Vec::new();
    for (index, name) in device.layered_deployments.iter().enumerate() {
        let manifest = manifests.get(name).ok_or_else(|| {
            missing(
                name,
                format!("device {:?} lists it but it is not resolved", device.id),
            )
        })?;
        layers.push((manifest.priority, index, manifest));
    }
    layers.sort_by_key(|(priority, index, _)| (*priority, *index));

    for (priority, _, manifest) in layers {
        let rendered = render_content(&manifest.content, variant, edge);
        let Some(entries) = rendered.get("modulesContent").and_then(Value::as_object) else {
            continue;
        };
        for (twin, twin_entries) in entries {
            let Some(twin_entries) = twin_entries.as_object() else {
                continue;
            };
            for (key, value) in twin_entries {
                let Some((owner_key, target)) = layered_target(twin, key) else {
                    continue;
                };
                // A section also yields to whoever replaced the whole module twin.
                let whole_twin = (twin != EDGE_AGENT && twin != EDGE_HUB && key != DESIRED)
                    .then(|| owners.get(&format!("twin/{twin}")).copied())
                    .flatten();
                let wins = [owners.get(&owner_key).copied(), whole_twin]
                    .into_iter()
                    .flatten()
                    .all(|owner| owner.yields_to(priority));
                if wins {
                    set_path(modules, &target, value.clone());
                    owners.insert(
                        owner_key,
                        Owner {
                            priority,
                            base: false,
                        },
                    );
                }
            }
        }
    }
    Ok(merged)
}

/// Who owns each entry of the base manifest: every module, system module, registry credential,
/// route and module twin it sets.
fn base_owners(modules: &Map<String, Value>, base_owner: Owner) -> BTreeMap<String, Owner> {
    let mut owners: BTreeMap<String, Owner> = BTreeMap::new();
    for (twin, entries) in modules.iter() {
        match twin.as_str() {
            EDGE_AGENT => {
                for (group, prefix) in [("modules", "module"), ("systemModules", "system")] {
                    for name in object_keys(entries.get(DESIRED).and_then(|d| d.get(group))) {
                        owners.insert(format!("{prefix}/{name}"), base_owner);
                    }
                }
                let creds =
                    entries.pointer("/properties.desired/runtime/settings/registryCredentials");
                for name in object_keys(creds) {
                    owners.insert(format!("credential/{name}"), base_owner);
                }
            }
            EDGE_HUB => {
                for name in object_keys(entries.get(DESIRED).and_then(|d| d.get("routes"))) {
                    owners.insert(format!("route/{name}"), base_owner);
                }
            }
            module => {
                owners.insert(format!("twin/{module}"), base_owner);
            }
        }
    }
    owners
}

/// The owner key and the full path a layered entry `key` of twin `twin` sets, or `None` for an
/// entry layering does not use.
fn layered_target<'a>(twin: &'a str, key: &'a str) -> Option<(String, Vec<&'a str>)> {
    Some(match twin {
        EDGE_AGENT => {
            if let Some(m) = key.strip_prefix(LAYERED_MODULE_PREFIX) {
                (
                    format!("module/{m}"),
                    vec![EDGE_AGENT, DESIRED, "modules", m],
                )
            } else {
                let n = key.strip_prefix(LAYERED_CREDENTIAL_PREFIX)?;
                (
                    format!("credential/{n}"),
                    vec![
                        EDGE_AGENT,
                        DESIRED,
                        "runtime",
                        "settings",
                        "registryCredentials",
                        n,
                    ],
                )
            }
        }
        EDGE_HUB => {
            let r = key.strip_prefix(LAYERED_ROUTE_PREFIX)?;
            (format!("route/{r}"), vec![EDGE_HUB, DESIRED, "routes", r])
        }
        module if key == DESIRED => (format!("twin/{module}"), vec![module, DESIRED]),
        module => {
            let section = key.strip_prefix(DESIRED_SECTION_PREFIX)?;
            let mut path = vec![module, DESIRED];
            path.extend(section.split('.'));
            (format!("twin/{module}/{section}"), path)
        }
    })
}

fn object_keys(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Sets `path` under `root` to `value`, creating (or replacing non-object) intermediate objects.
fn set_path(root: &mut Map<String, Value>, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = root;
    for key in parents {
        let entry = node.entry(key.to_string()).or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        node = entry.as_object_mut().expect("just made an object");
    }
    node.insert(last.to_string(), value);
}

#[cfg(test)]
#[path = "tests/merge.rs"]
mod tests;
