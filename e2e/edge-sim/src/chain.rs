//! The image-pull chain rule (docs/architecture.md, "Deployments and health"), as a pure function of the hierarchy.
//!
//! An image `$upstream:<port>/x` on device D is pulled from D's parent P, which works only if D's
//! TLS link to P is up and P runs an API proxy module (image containing
//! `azureiotedge-api-proxy`, running) listening on `<port>` (`NGINX_DEFAULT_PORT`, default 443),
//! and P's proxy can serve it: `DOCKER_REQUEST_ROUTE_ADDRESS` names a registry module
//! (`<module>:<port>`) that P runs and P is the top layer (only the top layer reaches the cloud),
//! or, when it is unset, P pulls the image from its own parent by the same rule. Any other image
//! names a registry host and can be pulled only by a top-layer device.

use std::collections::{BTreeMap, BTreeSet};

use crate::checks::upstream_port;

/// Marker of the API proxy module's image.
pub const API_PROXY_IMAGE_MARKER: &str = "azureiotedge-api-proxy";
/// The API proxy's port when `NGINX_DEFAULT_PORT` is unset.
pub const DEFAULT_PROXY_PORT: u16 = 443;

/// State of a child's TLS link to its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Handshake succeeded and the parent accepted the device.
    Up,
    /// The last attempt failed, for this reason.
    Down(String),
    /// Not tried yet.
    Unknown,
}

/// A desired module of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleSpec {
    /// Module name (`edgeHub` for the system module).
    pub name: String,
    /// `settings.image`.
    pub image: String,
    /// Desired `status` is `running` (system modules always are).
    pub wants_running: bool,
    /// `env.<NAME>.value`.
    pub env: BTreeMap<String, String>,
}

/// One device as the chain rule sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    /// Device id.
    pub id: String,
    /// Parent device id; `None` on the top layer.
    pub parent: Option<String>,
    /// The TLS link to the parent (ignored on the top layer).
    pub link: LinkState,
    /// Whether the device's edge runtime runs (checks passed).
    pub runtime_up: bool,
    /// Desired modules, edgeHub included.
    pub modules: Vec<ModuleSpec>,
}

/// What becomes of one module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleOutcome {
    /// Its image was pulled and it runs.
    Running,
    /// Desired stopped.
    Stopped,
    /// Its image cannot be pulled; the reason names the broken link.
    Backoff(String),
}

/// Outcomes by device id, then module name.
pub type Outcomes = BTreeMap<String, BTreeMap<String, ModuleOutcome>>;

/// Applies the chain rule to every module of every device.
pub fn resolve_modules(nodes: &[DeviceNode]) -> Outcomes {
    let by_id: BTreeMap<&str, &DeviceNode> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let mut order: Vec<(usize, &DeviceNode)> =
        nodes.iter().map(|n| (depth(n, &by_id), n)).collect();
    order.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    let mut outcomes = Outcomes::new();
    for (_, node) in order {
        let mut mine = BTreeMap::new();
        for module in &node.modules {
            let outcome = if !module.wants_running {
                ModuleOutcome::Stopped
            } else {
                match resolve_image(node, &module.image, &by_id, &outcomes) {
                    Ok(()) => ModuleOutcome::Running,
                    Err(reason) => ModuleOutcome::Backoff(reason),
                }
            };
            mine.insert(module.name.clone(), outcome);
        }
        outcomes.insert(node.id.clone(), mine);
    }
    outcomes
}

/// Generations above a node (0 on the top layer); a cycle or missing parent stops the count.
fn depth(node: &DeviceNode, by_id: &BTreeMap<&str, &DeviceNode>) -> usize {
    let mut seen = BTreeSet::new();
    let mut current = node;
    let mut depth = 0;
    while let Some(parent) = current.parent.as_deref() {
        if !seen.insert(parent) {
            break;
        }
        match by_id.get(parent) {
            Some(p) => {
                depth += 1;
                current = p;
            }
            None => {
                depth += 1;
                break;
            }
        }
    }
    depth
}

/// The registry host of an image without `$upstream` (Docker Hub when the first segment is not
/// a host).
pub fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

fn resolve_image(
    node: &DeviceNode,
    image: &str,
    by_id: &BTreeMap<&str, &DeviceNode>,
    outcomes: &Outcomes,
) -> Result<(), String> {
    if image.trim().is_empty() {
        return Err("no image: settings.image is empty".into());
    }
    if image.starts_with("$upstream") {
        let port = upstream_port(image).ok_or_else(|| {
            format!("image {image} is not of the form $upstream:<port>/<repository>:<tag>")
        })?;
        return resolve_upstream(node, port, by_id, outcomes, 0)
            .map_err(|why| format!("image pull from $upstream:{port} failed: {why}"));
    }
    let host = registry_host(image);
    match &node.parent {
        None => Ok(()),
        Some(parent) => Err(format!(
            "image pull from {host} failed: device {:?} is below the top layer (parent {parent:?}) and cannot reach {host}; pull it as $upstream:<port>/<repository> through the parent",
            node.id
        )),
    }
}

fn env_port(module: &ModuleSpec) -> Result<u16, String> {
    match module.env.get("NGINX_DEFAULT_PORT") {
        None => Ok(DEFAULT_PROXY_PORT),
        Some(v) => v.trim().parse().map_err(|_| {
            format!(
                "its API proxy {} has NGINX_DEFAULT_PORT {v:?}, which is not a port",
                module.name
            )
        }),
    }
}

fn resolve_upstream(
    node: &DeviceNode,
    port: u16,
    by_id: &BTreeMap<&str, &DeviceNode>,
    outcomes: &Outcomes,
    hops: usize,
) -> Result<(), String> {
    let Some(parent_id) = node.parent.as_deref() else {
        return Err(format!(
            "device {:?} is the top layer and has no parent to pull from",
            node.id
        ));
    };
    if hops > by_id.len() {
        return Err(format!("the parent chain above {:?} loops", node.id));
    }
    match &node.link {
        LinkState::Up => {}
        LinkState::Down(why) => {
            return Err(format!(
                "device {:?} cannot open TLS to parent {parent_id:?}: {why}",
                node.id
            ));
        }
        LinkState::Unknown => {
            return Err(format!(
                "device {:?} has not connected to parent {parent_id:?} yet",
                node.id
            ));
        }
    }
    let Some(parent) = by_id.get(parent_id) else {
        return Err(format!(
            "parent {parent_id:?} is not running (no bundle installed)"
        ));
    };
    if !parent.runtime_up {
        return Err(format!("parent {parent_id:?} has no running edge runtime"));
    }
    let proxies: Vec<&ModuleSpec> = parent
        .modules
        .iter()
        .filter(|m| m.image.contains(API_PROXY_IMAGE_MARKER))
        .collect();
    let mut other_ports = Vec::new();
    let mut proxy = None;
    for candidate in &proxies {
        let candidate_port =
            env_port(candidate).map_err(|e| format!("parent {parent_id:?}: {e}"))?;
        if candidate_port == port {
            proxy = Some(*candidate);
            break;
        }
        other_ports.push(format!("{} listens on {candidate_port}", candidate.name));
    }
    let Some(proxy) = proxy else {
        let others = if other_ports.is_empty() {
            String::new()
        } else {
            format!(" ({})", other_ports.join(", "))
        };
        return Err(format!(
            "parent {parent_id:?} runs no API proxy on port {port}{others}"
        ));
    };
    let parent_outcomes = outcomes.get(parent_id);
    match parent_outcomes.and_then(|o| o.get(&proxy.name)) {
        Some(ModuleOutcome::Running) => {}
        Some(ModuleOutcome::Stopped) => {
            return Err(format!(
                "the API proxy {} on parent {parent_id:?} is stopped",
                proxy.name
            ));
        }
        Some(ModuleOutcome::Backoff(why)) => {
            return Err(format!(
                "the API proxy {} on parent {parent_id:?} is not running ({why})",
                proxy.name
            ));
        }
        None => {
            return Err(format!(
                "the API proxy {} on parent {parent_id:?} has not started",
                proxy.name
            ));
        }
    }
    match proxy
        .env
        .get("DOCKER_REQUEST_ROUTE_ADDRESS")
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
    {
        Some(address) => {
            let module_name = address.split(':').next().unwrap_or(address);
            let Some(registry) = parent.modules.iter().find(|m| m.name == module_name) else {
                return Err(format!(
                    "the API proxy on parent {parent_id:?} routes image pulls to {address}, but {parent_id:?} runs no module {module_name:?}"
                ));
            };
            match parent_outcomes.and_then(|o| o.get(&registry.name)) {
                Some(ModuleOutcome::Running) => {}
                Some(ModuleOutcome::Backoff(why)) => {
                    return Err(format!(
                        "the registry module {module_name:?} on parent {parent_id:?} is not running ({why})"
                    ));
                }
                _ => {
                    return Err(format!(
                        "the registry module {module_name:?} on parent {parent_id:?} is not running"
                    ));
                }
            }
            if let Some(grandparent) = &parent.parent {
                return Err(format!(
                    "the API proxy on parent {parent_id:?} routes image pulls to its registry module {module_name:?}, but {parent_id:?} is below the top layer (parent {grandparent:?}) so that registry cannot reach the cloud"
                ));
            }
            Ok(())
        }
        None => {
            if parent.parent.is_none() {
                return Err(format!(
                    "parent {parent_id:?} is the top layer, but its API proxy {} has no DOCKER_REQUEST_ROUTE_ADDRESS naming a registry module",
                    proxy.name
                ));
            }
            resolve_upstream(parent, port, by_id, outcomes, hops + 1)
                .map_err(|why| format!("parent {parent_id:?} forwards the pull upstream: {why}"))
        }
    }
}

#[cfg(test)]
mod tests;
