//! The benchmark hierarchy: a generated ISA-95 tree of Edge gateways with Leaf devices at the
//! bottom, rendered both as an `EdgeHierarchy` object (for the operator) and as a device plan
//! (for the SDK script that creates it device by device).

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// IoT Hub's limit of children per parent (`MaxConnectedClients` default).
pub const MAX_CHILDREN: usize = 100;
/// IoT Hub's limit of nested Edge layers.
pub const MAX_EDGE_LAYERS: usize = 5;

/// Edge or Leaf, as the `EdgeHierarchy` spec spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// An IoT Edge device (gateway or workload host).
    Edge,
    /// A non-edge downstream device.
    Leaf,
}

impl DeviceKind {
    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Edge => "Edge",
            DeviceKind::Leaf => "Leaf",
        }
    }
}

/// One generated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Device id, `<prefix>-l<layer>-<index>`.
    pub id: String,
    /// Parent id (None for a top device).
    pub parent: Option<String>,
    /// Edge or Leaf.
    pub kind: DeviceKind,
    /// Layer, 1 for top devices.
    pub layer: usize,
    /// Name of the deployment of an Edge device.
    pub deployment: Option<&'static str>,
}

/// How many devices each layer holds and how many of the last layer are Leaf devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Devices per layer, top first.
    pub layers: Vec<usize>,
    /// Leaf devices among the last layer (the rest of it are Edge devices).
    pub leaves_in_last_layer: usize,
}

impl Shape {
    /// The benchmark's 1,000 devices in 5 layers: 5 top gateways, 25, 100, 300, and at the
    /// bottom 270 Edge devices running the workload beside 300 Leaf devices (700 Edge in all).
    pub fn thousand_in_five_layers() -> Self {
        Shape {
            layers: vec![5, 25, 100, 300, 570],
            leaves_in_last_layer: 300,
        }
    }

    /// Total number of devices.
    pub fn device_count(&self) -> usize {
        self.layers.iter().sum()
    }
}

/// Deployment names, by layer: the factory example's (top layer hosts the registry and API proxy,
/// middle layers forward through an API proxy, the bottom Edge layer runs the workload).
fn deployment_for(layer: usize, last_layer: usize) -> &'static str {
    match layer {
        1 => "enterprise",
        l if l == last_layer => "cell",
        _ => "gateway",
    }
}

/// The deployment names [`generate`] assigns.
pub const DEPLOYMENT_NAMES: [&str; 3] = ["enterprise", "gateway", "cell"];

/// Generates the tree, parents before children. Children of a layer are dealt round-robin to
/// the devices of the layer above, so fan-out is as even as the sizes allow; in the last layer
/// the Edge devices come first and the Leaf devices after them.
///
/// Fails when the shape breaks an IoT Hub rule: more than five Edge layers, more than
/// [`MAX_CHILDREN`] children per parent, Leaf devices anywhere but the last layer, or an empty layer.
pub fn generate(prefix: &str, shape: &Shape) -> anyhow::Result<Vec<Device>> {
    let depth = shape.layers.len();
    if depth == 0 || shape.layers.contains(&0) {
        bail!("every layer needs at least one device: {:?}", shape.layers);
    }
    let last = *shape.layers.last().expect("depth > 0");
    if shape.leaves_in_last_layer > last || (depth == 1 && shape.leaves_in_last_layer > 0) {
        bail!(
            "{} Leaf devices do not fit a last layer of {last} below Edge devices",
            shape.leaves_in_last_layer
        );
    }
    let edge_layers = if shape.leaves_in_last_layer == last {
        depth - 1
    } else {
        depth
    };
    if edge_layers > MAX_EDGE_LAYERS {
        bail!("{edge_layers} Edge layers; IoT Hub allows {MAX_EDGE_LAYERS}");
    }
    let mut devices = Vec::with_capacity(shape.device_count());
    let mut above: Vec<String> = Vec::new();
    for (index, &count) in shape.layers.iter().enumerate() {
        let layer = index + 1;
        if layer > 1 && count.div_ceil(above.len()) > MAX_CHILDREN {
            bail!(
                "layer {layer}: {count} devices below {} parents exceed {MAX_CHILDREN} children per parent",
                above.len()
            );
        }
        let edge_count = if layer == depth {
            count - shape.leaves_in_last_layer
        } else {
            count
        };
        let mut this_layer = Vec::with_capacity(count);
        for i in 0..count {
            let kind = if i < edge_count {
                DeviceKind::Edge
            } else {
                DeviceKind::Leaf
            };
            let id = format!("{prefix}-l{layer}-{i:03}");
            devices.push(Device {
                id: id.clone(),
                parent: (layer > 1).then(|| above[i % above.len()].clone()),
                kind,
                layer,
                deployment: (kind == DeviceKind::Edge).then(|| deployment_for(layer, depth)),
            });
            if kind == DeviceKind::Edge {
                this_layer.push(id);
            }
        }
        above = this_layer;
    }
    Ok(devices)
}

/// The deployments of `examples/factory.yaml` that [`generate`] names, as `name -> modulesContent`.
pub fn factory_deployments(factory_yaml: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let factory: Value =
        serde_yaml::from_str(factory_yaml).context("parsing examples/factory.yaml")?;
    let mut found = BTreeMap::new();
    for deployment in factory
        .pointer("/spec/deployments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = deployment.get("name").and_then(Value::as_str) else {
            continue;
        };
        if DEPLOYMENT_NAMES.contains(&name) {
            let content = deployment
                .pointer("/content/modulesContent")
                .with_context(|| {
                    format!(
                        "examples/factory.yaml: deployment {name} has no content.modulesContent"
                    )
                })?;
            found.insert(name.to_string(), content.clone());
        }
    }
    for name in DEPLOYMENT_NAMES {
        if !found.contains_key(name) {
            bail!(
                "examples/factory.yaml has no deployment named {name}; the benchmark assigns it to its devices"
            );
        }
    }
    Ok(found)
}

/// Options of the `EdgeHierarchy` object beyond its devices.
#[derive(Debug, Clone)]
pub struct ObjectOptions<'a> {
    /// metadata.name
    pub name: &'a str,
    /// Hub tier for `spec.iotHub.rateLimits`.
    pub sku: &'a str,
    /// Hub units for `spec.iotHub.rateLimits`.
    pub units: u32,
    /// `spec.certificates.algorithm`, when set.
    pub certificate_algorithm: Option<&'a str>,
    /// Include the deployments (and each Edge device's `deployment`).
    pub with_deployments: bool,
}

/// The `EdgeHierarchy` object for the operator, pointing at the Secrets `iothub-service`
/// (connection string) and `iothub-ca` (the emulator's CA).
pub fn hierarchy_object(
    devices: &[Device],
    deployments: &BTreeMap<String, Value>,
    options: &ObjectOptions,
) -> Value {
    let devices: Vec<Value> = devices
        .iter()
        .map(|d| {
            let mut item = json!({"id": d.id});
            if let Some(parent) = &d.parent {
                item["parent"] = json!(parent);
            }
            if d.kind == DeviceKind::Leaf {
                item["type"] = json!("Leaf");
            }
            if let (true, Some(deployment)) = (options.with_deployments, d.deployment) {
                item["deployment"] = json!(deployment);
            }
            item
        })
        .collect();
    let mut spec = json!({
        "iotHub": {
            "connectionStringSecretRef": {"name": "iothub-service", "key": "connectionString"},
            "caSecretRef": {"name": "iothub-ca"},
            "rateLimits": {"sku": options.sku, "units": options.units},
        },
        // No resync while the benchmark runs: the numbers are those of the first convergence.
        "policy": {"resyncInterval": "1h"},
        "devices": devices,
    });
    if options.with_deployments {
        spec["deployments"] = deployments
            .iter()
            .map(|(name, content)| json!({"name": name, "priority": 10, "content": {"modulesContent": content}}))
            .collect();
    }
    if let Some(algorithm) = options.certificate_algorithm {
        spec["certificates"] = json!({"algorithm": algorithm});
    }
    json!({
        "apiVersion": "edgehierarchy.dev/v1alpha1",
        "kind": "EdgeHierarchy",
        "metadata": {"name": options.name},
        "spec": spec,
    })
}

/// The plan the SDK script reads: devices in creation order and `deployment name -> modulesContent`.
pub fn sdk_plan(
    devices: &[Device],
    deployments: &BTreeMap<String, Value>,
    with_deployments: bool,
) -> Value {
    let devices: Vec<Value> = devices
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "parent": d.parent,
                "type": d.kind.as_str(),
                "deployment": if with_deployments { d.deployment } else { None },
            })
        })
        .collect();
    json!({"devices": devices, "deployments": deployments})
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn thousand() -> Vec<Device> {
        generate("op", &Shape::thousand_in_five_layers()).unwrap()
    }

    #[test]
    fn the_benchmark_shape_has_1000_devices_in_five_layers() {
        let devices = thousand();
        assert_eq!(devices.len(), 1000);
        let mut per_layer = [0usize; 6];
        for d in &devices {
            per_layer[d.layer] += 1;
        }
        assert_eq!(per_layer, [0, 5, 25, 100, 300, 570]);
        let leaves: Vec<&Device> = devices
            .iter()
            .filter(|d| d.kind == DeviceKind::Leaf)
            .collect();
        assert_eq!(leaves.len(), 300);
        assert!(
            leaves
                .iter()
                .all(|d| d.layer == 5 && d.deployment.is_none())
        );
        assert_eq!(
            devices
                .iter()
                .filter(|d| d.kind == DeviceKind::Edge)
                .count(),
            700
        );
    }

    #[test]
    fn parents_come_first_are_edge_devices_one_layer_up_and_have_at_most_100_children() {
        let devices = thousand();
        let by_id: HashMap<&str, &Device> = devices.iter().map(|d| (d.id.as_str(), d)).collect();
        assert_eq!(by_id.len(), devices.len(), "ids are unique");
        let mut seen = HashSet::new();
        let mut children: HashMap<&str, usize> = HashMap::new();
        for d in &devices {
            match &d.parent {
                None => assert_eq!(d.layer, 1, "{} has no parent below the top", d.id),
                Some(parent) => {
                    assert!(
                        seen.contains(parent.as_str()),
                        "{} comes before its parent {parent}",
                        d.id
                    );
                    let p = by_id[parent.as_str()];
                    assert_eq!(
                        p.kind,
                        DeviceKind::Edge,
                        "{}'s parent {parent} is not Edge",
                        d.id
                    );
                    assert_eq!(
                        p.layer + 1,
                        d.layer,
                        "{}: parent {parent} not one layer up",
                        d.id
                    );
                    *children.entry(parent.as_str()).or_default() += 1;
                }
            }
            seen.insert(d.id.as_str());
        }
        let most = children.values().copied().max().unwrap();
        assert!(most <= MAX_CHILDREN, "a parent has {most} children");
        // Round-robin keeps the fan-out even: 5 per top device, 4, 3, then 1 or 2.
        assert_eq!(children["op-l1-000"], 5);
        assert_eq!(children["op-l4-299"], 1);
        assert_eq!(children["op-l4-000"], 2);
    }

    #[test]
    fn deployments_follow_the_layer() {
        let devices = thousand();
        let of = |id: &str| devices.iter().find(|d| d.id == id).unwrap().deployment;
        assert_eq!(of("op-l1-004"), Some("enterprise"));
        assert_eq!(of("op-l2-000"), Some("gateway"));
        assert_eq!(of("op-l4-299"), Some("gateway"));
        assert_eq!(of("op-l5-269"), Some("cell"));
        assert_eq!(of("op-l5-270"), None, "the first Leaf device");
    }

    #[test]
    fn shapes_that_break_hub_rules_are_refused() {
        let too_deep = Shape {
            layers: vec![1; 6],
            leaves_in_last_layer: 0,
        };
        assert!(
            generate("x", &too_deep)
                .unwrap_err()
                .to_string()
                .contains("6 Edge layers")
        );
        // Six layers are fine when the sixth holds only Leaf devices.
        let leaves_below_five = Shape {
            layers: vec![1, 1, 1, 1, 1, 3],
            leaves_in_last_layer: 3,
        };
        assert_eq!(generate("x", &leaves_below_five).unwrap().len(), 8);
        let too_wide = Shape {
            layers: vec![1, 101],
            leaves_in_last_layer: 0,
        };
        assert!(
            generate("x", &too_wide)
                .unwrap_err()
                .to_string()
                .contains("100 children")
        );
        let empty = Shape {
            layers: vec![2, 0],
            leaves_in_last_layer: 0,
        };
        assert!(generate("x", &empty).is_err());
        let leaf_tops = Shape {
            layers: vec![2],
            leaves_in_last_layer: 1,
        };
        assert!(generate("x", &leaf_tops).is_err());
        let too_many_leaves = Shape {
            layers: vec![1, 2],
            leaves_in_last_layer: 3,
        };
        assert!(generate("x", &too_many_leaves).is_err());
    }

    fn deployments() -> BTreeMap<String, Value> {
        DEPLOYMENT_NAMES
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    json!({"$edgeAgent": {"properties.desired": {"m": n}}}),
                )
            })
            .collect()
    }

    #[test]
    fn the_object_carries_rate_limits_the_emulator_ca_and_deployments() {
        let devices = generate(
            "op",
            &Shape {
                layers: vec![1, 2],
                leaves_in_last_layer: 1,
            },
        )
        .unwrap();
        let options = ObjectOptions {
            name: "bench",
            sku: "S3",
            units: 1,
            certificate_algorithm: Some("Rsa2048"),
            with_deployments: true,
        };
        let object = hierarchy_object(&devices, &deployments(), &options);
        assert_eq!(object["metadata"]["name"], "bench");
        assert_eq!(
            object["spec"]["iotHub"]["rateLimits"],
            json!({"sku": "S3", "units": 1})
        );
        assert_eq!(object["spec"]["iotHub"]["caSecretRef"]["name"], "iothub-ca");
        assert_eq!(object["spec"]["certificates"]["algorithm"], "Rsa2048");
        assert_eq!(
            object["spec"]["devices"],
            json!([
                {"id": "op-l1-000", "deployment": "enterprise"},
                {"id": "op-l2-000", "parent": "op-l1-000", "deployment": "cell"},
                {"id": "op-l2-001", "parent": "op-l1-000", "type": "Leaf"},
            ])
        );
        let names: Vec<&str> = object["spec"]["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cell", "enterprise", "gateway"]);
        assert_eq!(
            object["spec"]["deployments"][0]["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]
                ["m"],
            "cell"
        );

        let bare = hierarchy_object(
            &devices,
            &deployments(),
            &ObjectOptions {
                with_deployments: false,
                certificate_algorithm: None,
                ..options
            },
        );
        assert!(
            bare["spec"].get("deployments").is_none() && bare["spec"].get("certificates").is_none()
        );
        assert!(
            bare["spec"]["devices"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d.get("deployment").is_none())
        );
    }

    #[test]
    fn the_sdk_plan_lists_devices_in_order_with_their_deployments() {
        let devices = generate(
            "sdk",
            &Shape {
                layers: vec![1, 2],
                leaves_in_last_layer: 1,
            },
        )
        .unwrap();
        let plan = sdk_plan(&devices, &deployments(), true);
        assert_eq!(
            plan["devices"][0],
            json!({"id": "sdk-l1-000", "parent": null, "type": "Edge", "deployment": "enterprise"})
        );
        assert_eq!(
            plan["devices"][2],
            json!({"id": "sdk-l2-001", "parent": "sdk-l1-000", "type": "Leaf", "deployment": null})
        );
        assert_eq!(
            plan["deployments"]["gateway"]["$edgeAgent"]["properties.desired"]["m"],
            "gateway"
        );
        let without = sdk_plan(&devices, &deployments(), false);
        assert!(
            without["devices"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["deployment"].is_null())
        );
    }

    #[test]
    fn the_factory_example_provides_the_three_deployments() {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/factory.yaml");
        let found = factory_deployments(&std::fs::read_to_string(root).unwrap()).unwrap();
        assert_eq!(
            found.keys().map(String::as_str).collect::<Vec<_>>(),
            ["cell", "enterprise", "gateway"]
        );
        assert!(
            found
                .values()
                .all(|c| c.get("$edgeAgent").is_some() && c.get("$edgeHub").is_some())
        );
        assert!(
            factory_deployments(
                "spec: {deployments: [{name: cell, content: {modulesContent: {}}}]}"
            )
            .unwrap_err()
            .to_string()
            .contains("enterprise")
        );
    }
}
