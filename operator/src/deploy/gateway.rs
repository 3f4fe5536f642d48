//! The gateway check (docs/architecture.md, "Deployments and health"): can every Edge device pull
//! its images?
//!
//! A device below the top layer pulls `$upstream:<port>/...` from its parent. The parent serves
//! that when it runs an API proxy module (image `azureiotedge-api-proxy`) listening on the
//! upstream port (env `NGINX_DEFAULT_PORT`, 443 when unset), and that proxy can serve registry
//! pulls: either `DOCKER_REQUEST_ROUTE_ADDRESS` names a registry module (`<module>:<port>`) the
//! parent runs and the parent is a top-layer device (only the top layer reaches the cloud), or,
//! when unset, the parent's own parent serves pulls the same way.
//!
//! Besides, a lower-layer device cannot pull images from registries that are not rewritten to
//! `$upstream` (not in `upstreamRegistries`): it has no route to them.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::image::{repository_name, unreachable_registry};
use super::manifest::{DESIRED, EDGE_AGENT, Manifests};
use super::merge::merged_manifest;
use crate::api::{DeviceSpec, DeviceType, EdgeHierarchySpec, Topology};

/// Repository name of the IoT Edge API proxy image.
pub const API_PROXY_IMAGE: &str = "azureiotedge-api-proxy";
/// The proxy's listening port variable.
pub const PORT_ENV: &str = "NGINX_DEFAULT_PORT";
/// The proxy's registry route variable.
pub const REGISTRY_ROUTE_ENV: &str = "DOCKER_REQUEST_ROUTE_ADDRESS";
/// The API proxy's port when `NGINX_DEFAULT_PORT` is unset.
pub const DEFAULT_PROXY_PORT: u16 = 443;

/// A device whose children (or itself) cannot pull images; for `DeploymentsReady=False`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GatewayWarning {
    /// The device the warning is about.
    pub device: String,
    /// What is missing, naming the device, its deployment and the fix.
    pub message: String,
}

impl fmt::Display for GatewayWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The gateway check over the whole hierarchy, parents first.
///
/// For each Edge device with Edge children: a warning when its (merged, rendered) manifest runs no
/// API proxy on `spec.edge.upstreamPort`, or its proxy cannot serve registry pulls (see the module
/// docs). A device whose proxy forwards pulls to a parent that cannot serve them names that parent.
/// For each device below the top layer: a warning per module image from a registry it cannot
/// reach. Devices whose manifest cannot be merged are reported as such.
pub fn gateway_warnings(
    spec: &EdgeHierarchySpec,
    topology: &Topology,
    manifests: &Manifests,
) -> Vec<GatewayWarning> {
    let by_id: BTreeMap<&str, &DeviceSpec> =
        spec.devices.iter().map(|d| (d.id.as_str(), d)).collect();
    let edge = |id: &str| {
        by_id
            .get(id)
            .is_some_and(|d| d.device_type == DeviceType::Edge)
    };
    let mut warnings = Vec::new();
    // Whether each device serves registry pulls to its children: Ok, or why not.
    let mut serves: BTreeMap<String, Result<(), String>> = BTreeMap::new();

    for id in &topology.order {
        let Some(device) = by_id
            .get(id.as_str())
            .filter(|d| d.device_type == DeviceType::Edge)
        else {
            continue;
        };
        let layer = topology.layer.get(id).copied().unwrap_or(1);
        let deployment = device.deployment.as_deref().unwrap_or_default();
        let manifest = match merged_manifest(device, layer, &spec.edge, manifests) {
            Ok(m) => m,
            Err(e) => {
                warnings.push(GatewayWarning {
                    device: id.clone(),
                    message: format!("device {id:?}: its manifest cannot be built ({e})"),
                });
                serves.insert(id.clone(), Err("cannot be built".to_string()));
                continue;
            }
        };
        let modules = manifest
            .pointer(&format!("/modulesContent/{EDGE_AGENT}/{DESIRED}/modules"))
            .and_then(Value::as_object);

        if layer > 1 {
            for (name, module) in modules.into_iter().flatten() {
                let Some(image) = module.pointer("/settings/image").and_then(Value::as_str) else {
                    continue;
                };
                if let Some(registry) = unreachable_registry(image, &spec.edge) {
                    warnings.push(GatewayWarning {
                        device: id.clone(),
                        message: format!(
                            "device {id:?} is in layer {layer}, but module {name:?} of its deployment {deployment:?} pulls \
                             image {image:?} from {registry}, which is not in spec.edge.upstreamRegistries, so the device \
                             has no route to it; add {registry:?} to upstreamRegistries (and mirror it on the top layer)"
                        ),
                    });
                }
            }
        }

        let parent_serves = device
            .parent
            .as_deref()
            .map(|p| (p, serves.get(p).cloned()));
        let verdict = registry_route(id, layer, modules, spec.edge.upstream_port, parent_serves);
        let has_edge_children = topology
            .children
            .get(id)
            .is_some_and(|kids| kids.iter().any(|k| edge(k)));
        if has_edge_children && let Err(why) = &verdict {
            warnings.push(GatewayWarning {
                device: id.clone(),
                message: format!(
                    "device {id:?} has Edge children but its deployment {deployment:?} {why}; its children cannot pull images"
                ),
            });
        }
        serves.insert(id.clone(), verdict);
    }
    warnings
}

/// The `modules` object of a manifest's `$edgeAgent`, if any.
type Modules<'a> = Option<&'a serde_json::Map<String, Value>>;

fn env<'a>(module: &'a Value, name: &str) -> Option<&'a Value> {
    module
        .get("env")
        .and_then(|e| e.get(name))
        .and_then(|v| v.get("value"))
}

fn runs(module: &Value) -> bool {
    module
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("running")
        == "running"
}

/// Whether a device with these modules serves `$upstream:<port>` registry pulls, or why not
/// (phrased to follow "its deployment ...").
fn registry_route(
    id: &str,
    layer: u32,
    modules: Modules<'_>,
    upstream_port: u16,
    parent: Option<(&str, Option<Result<(), String>>)>,
) -> Result<(), String> {
    let proxies: Vec<(&String, &Value)> = modules
        .into_iter()
        .flatten()
        .filter(|(_, m)| {
            m.pointer("/settings/image")
                .and_then(Value::as_str)
                .is_some_and(|i| repository_name(i) == API_PROXY_IMAGE)
        })
        .collect();
    if proxies.is_empty() {
        return Err(format!(
            "runs no API proxy ({API_PROXY_IMAGE}) on port {upstream_port}"
        ));
    }
    let port_of = |m: &Value| -> Result<u16, String> {
        match env(m, PORT_ENV) {
            None => Ok(DEFAULT_PROXY_PORT),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| n.to_string()),
            Some(Value::String(s)) => s.trim().parse::<u16>().map_err(|_| s.clone()),
            Some(other) => Err(other.to_string()),
        }
    };
    let listening: Vec<&(&String, &Value)> = proxies
        .iter()
        .filter(|(_, m)| runs(m) && port_of(m) == Ok(upstream_port))
        .collect();
    let Some((proxy_name, proxy)) = listening.first() else {
        let (name, module) = proxies[0];
        return Err(if !runs(module) {
            format!("sets its API proxy module {name:?} to stopped; set its status to running")
        } else {
            match port_of(module) {
                Ok(port) => format!(
                    "runs its API proxy module {name:?} on port {port} ({PORT_ENV}), not on the upstream port \
                     {upstream_port}; set {PORT_ENV} to {upstream_port}"
                ),
                Err(raw) => format!(
                    "sets {PORT_ENV} of its API proxy module {name:?} to {raw}, which is not a port; set it to {upstream_port}"
                ),
            }
        });
    };
    match env(proxy, REGISTRY_ROUTE_ENV)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(route) => {
            let target = route.split(':').next().unwrap_or(route);
            let registry = modules.and_then(|m| m.get(target));
            match registry {
                None => Err(format!(
                    "routes registry pulls of its API proxy {proxy_name:?} to {route:?} ({REGISTRY_ROUTE_ENV}), but runs \
                     no module {target:?}; add a registry module named {target:?} or correct the route"
                )),
                Some(m) if !runs(m) => Err(format!(
                    "routes registry pulls of its API proxy {proxy_name:?} to module {target:?}, which it sets to \
                     stopped; set its status to running"
                )),
                Some(_) if layer > 1 => Err(format!(
                    "routes registry pulls of its API proxy {proxy_name:?} to its own module {target:?}, but device \
                     {id:?} is in layer {layer} and only a top-layer device reaches the cloud; remove \
                     {REGISTRY_ROUTE_ENV} so pulls go to its parent"
                )),
                Some(_) => Ok(()),
            }
        }
        None => match parent {
            None => Err(format!(
                "sets no {REGISTRY_ROUTE_ENV} on its API proxy {proxy_name:?} and, as a top-layer device, has no parent \
                 to forward pulls to; run a registry module and set {REGISTRY_ROUTE_ENV} to <module>:<port>, for \
                 example registry:5000"
            )),
            Some((_, Some(Ok(())))) => Ok(()),
            Some((p, Some(Err(why)))) => Err(format!(
                "forwards registry pulls to its parent {p:?}, whose deployment {why}"
            )),
            Some((p, None)) => Err(format!(
                "forwards registry pulls to its parent {p:?}, which is not an Edge device of this hierarchy"
            )),
        },
    }
}

#[cfg(test)]
#[path = "tests/gateway.rs"]
mod tests;
