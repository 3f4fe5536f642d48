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
//!
//! Under `spec.certificates.issuance: Est` a device below the top layer also enrolls over EST
//! through its parent (docs/est.md, "Lower layers"). The parent relays EST when its API proxy's
//! custom configuration (module twin desired property `proxy_config`, base64 nginx text that
//! replaces the default) has a `stream` server listening on the EST port that passes connections
//! on unchanged (TCP, no `ssl`), and, below the top layer, its own parent relays too. An HTTP
//! `location` does not do: it ends the device's TLS at the proxy, and the operator authenticates
//! devices by their TLS client certificate.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use super::image::{repository_name, unreachable_registry};
use super::manifest::{DESIRED, EDGE_AGENT, Manifests};
use super::merge::merged_manifest;
use super::nginx;
use crate::api::{CertificateIssuance, DeviceSpec, DeviceType, EdgeHierarchySpec, Topology};
use crate::est::EST_PATH;

/// Repository name of the IoT Edge API proxy image.
pub const API_PROXY_IMAGE: &str = "azureiotedge-api-proxy";
/// The proxy's listening port variable.
pub const PORT_ENV: &str = "NGINX_DEFAULT_PORT";
/// The proxy's registry route variable.
pub const REGISTRY_ROUTE_ENV: &str = "DOCKER_REQUEST_ROUTE_ADDRESS";
/// The API proxy's port when `NGINX_DEFAULT_PORT` is unset.
pub const DEFAULT_PROXY_PORT: u16 = 443;
/// The API proxy's module twin desired property holding its custom nginx configuration (base64).
pub const PROXY_CONFIG_PROPERTY: &str = "proxy_config";
/// Where the EST relay is explained to users.
const EST_RELAY_DOC: &str = "docs/est.md, \"Lower layers\"";

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
/// reach. Under `issuance: Est`, for each Edge device with Edge children: a warning when it
/// cannot relay EST to them (see the module docs); `est_port` is the port of `--est-url`, `None`
/// when the operator serves no EST (any port then does). Devices whose manifest cannot be merged
/// are reported as such.
pub fn gateway_warnings(
    spec: &EdgeHierarchySpec,
    topology: &Topology,
    manifests: &Manifests,
    est_port: Option<u16>,
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
    // Whether each device relays EST to its children, likewise (only under `issuance: Est`).
    let est = spec.certificates.issuance == CertificateIssuance::Est;
    let mut relays: BTreeMap<String, Result<(), String>> = BTreeMap::new();

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
                relays.insert(id.clone(), Err("cannot be built".to_string()));
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

        if est {
            let parent_relays = device
                .parent
                .as_deref()
                .map(|p| (p, relays.get(p).cloned()));
            let verdict = est_relay(&manifest, modules, est_port, parent_relays);
            if has_edge_children && let Err(why) = &verdict {
                warnings.push(GatewayWarning {
                    device: id.clone(),
                    message: format!(
                        "device {id:?} has Edge children that enroll over EST through it (spec.certificates.issuance: \
                         Est), but its deployment {deployment:?} {why}; its children cannot renew their certificates \
                         ({EST_RELAY_DOC})"
                    ),
                });
            }
            relays.insert(id.clone(), verdict);
        }
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

/// The API proxy modules among these, by name.
fn api_proxies(modules: Modules<'_>) -> Vec<(&String, &Value)> {
    modules
        .into_iter()
        .flatten()
        .filter(|(_, m)| {
            m.pointer("/settings/image")
                .and_then(Value::as_str)
                .is_some_and(|i| repository_name(i) == API_PROXY_IMAGE)
        })
        .collect()
}

/// The port an API proxy module serves HTTP on (`NGINX_DEFAULT_PORT`), or its raw value when that
/// is no port.
fn port_of(module: &Value) -> Result<u16, String> {
    match env(module, PORT_ENV) {
        None => Ok(DEFAULT_PROXY_PORT),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| n.to_string()),
        Some(Value::String(s)) => s.trim().parse::<u16>().map_err(|_| s.clone()),
        Some(other) => Err(other.to_string()),
    }
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
    let proxies = api_proxies(modules);
    if proxies.is_empty() {
        return Err(format!(
            "runs no API proxy ({API_PROXY_IMAGE}) on port {upstream_port}"
        ));
    }
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
            Some(parent) => parent_verdict("forwards registry pulls", parent),
        },
    }
}

/// Whether a device with this manifest relays EST to its children, or why not (phrased to follow
/// "its deployment ..."): one of its running API proxies relays (see [`proxy_relays_est`]) and,
/// unless it is a top-layer device (no parent), its parent relays too.
fn est_relay(
    manifest: &Value,
    modules: Modules<'_>,
    est_port: Option<u16>,
    parent: Option<(&str, Option<Result<(), String>>)>,
) -> Result<(), String> {
    let proxies = api_proxies(modules);
    let Some(&(first, _)) = proxies.first() else {
        return Err(format!(
            "runs no API proxy ({API_PROXY_IMAGE}) to relay EST; add one with a {PROXY_CONFIG_PROPERTY}"
        ));
    };
    let running: Vec<_> = proxies.iter().filter(|(_, m)| runs(m)).collect();
    if running.is_empty() {
        return Err(format!(
            "sets its API proxy module {first:?} to stopped; set its status to running"
        ));
    }
    // Any one relaying proxy does; otherwise the first one's problem is named.
    let verdicts: Vec<Result<(), String>> = running
        .iter()
        .map(|(name, module)| proxy_relays_est(manifest, name, module, est_port))
        .collect();
    if !verdicts.iter().any(Result::is_ok) {
        return Err(verdicts
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_default());
    }
    parent.map_or(Ok(()), |parent| parent_verdict("relays EST", parent))
}

/// A device's verdict that hangs on its parent's: `what` (e.g. "relays EST") the device does
/// through its parent works when the parent's own verdict is `Ok`; otherwise the parent is named.
fn parent_verdict(
    what: &str,
    (parent, verdict): (&str, Option<Result<(), String>>),
) -> Result<(), String> {
    match verdict {
        Some(Ok(())) => Ok(()),
        Some(Err(why)) => Err(format!(
            "{what} to its parent {parent:?}, whose deployment {why}"
        )),
        None => Err(format!(
            "{what} to its parent {parent:?}, which is not an Edge device of this hierarchy"
        )),
    }
}

/// Whether this API proxy module relays EST, judged from its `proxy_config` as the proxy will
/// read it: a `stream` server listening on the EST port without `ssl` (so the device's TLS
/// reaches the EST server) with a `proxy_pass`.
fn proxy_relays_est(
    manifest: &Value,
    name: &str,
    module: &Value,
    est_port: Option<u16>,
) -> Result<(), String> {
    let port = est_port.map_or("the port of --est-url".to_string(), |p| format!("port {p}"));
    let add = format!(
        "add a stream server that listens on {port} and passes connections to the EST server (proxy_pass)"
    );
    if let Some(p) = est_port
        && port_of(module) == Ok(p)
    {
        return Err(format!(
            "serves HTTP on port {p} with its API proxy {name:?} ({PORT_ENV}), the port devices reach EST on, so \
             the proxy cannot also relay EST there; give --est-url another port"
        ));
    }
    let Some(raw) = manifest
        .get("modulesContent")
        .and_then(|m| m.get(name))
        .and_then(|twin| twin.get(DESIRED))
        .and_then(|desired| desired.get(PROXY_CONFIG_PROPERTY))
    else {
        return Err(format!(
            "gives its API proxy {name:?} no {PROXY_CONFIG_PROPERTY} (module twin desired property), and the \
             proxy's default configuration does not relay EST; {add}"
        ));
    };
    let text = raw
        .as_str()
        .and_then(|s| BASE64.decode(s.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| {
            format!(
                "sets {PROXY_CONFIG_PROPERTY} of its API proxy {name:?} to something that is not base64 of a text; \
                 encode the nginx configuration with base64"
            )
        })?;
    let env: BTreeMap<String, String> = module
        .get("env")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let value = match v.get("value")? {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((k.clone(), value))
        })
        .collect();
    let config = nginx::parse(&nginx::substitute(&text, &env)).map_err(|e| {
        format!("sets a {PROXY_CONFIG_PROPERTY} on its API proxy {name:?} that is not an nginx configuration ({e})")
    })?;
    let passes_through = |server: &nginx::Directive| {
        server.children("proxy_pass").next().is_some()
            && server.children("listen").any(|listen| {
                !listen.args.iter().any(|a| a == "ssl")
                    && listen
                        .args
                        .first()
                        .and_then(|a| nginx::listen_port(a))
                        .is_some_and(|p| est_port.is_none_or(|e| e == p))
            })
    };
    let servers = |block: &'static str| {
        config
            .iter()
            .filter(move |d| d.name == block)
            .flat_map(|d| d.children("server"))
    };
    if servers("stream").any(passes_through) {
        return Ok(());
    }
    if servers("http")
        .flat_map(|s| s.children("location"))
        .any(|l| location_matches_est(&l.args))
    {
        return Err(format!(
            "relays {EST_PATH} in an http location of its API proxy {name:?}, which ends the devices' TLS at the \
             proxy (aziot-certd trusts only the EST CA for EST, and the operator authenticates devices by their TLS \
             client certificate); instead {add}, without ssl"
        ));
    }
    Err(format!(
        "has no stream server in the {PROXY_CONFIG_PROPERTY} of its API proxy {name:?} that listens on {port} \
         without ssl and passes connections on; {add}"
    ))
}

/// Whether an nginx `location` with these arguments takes the requests aziot-certd sends
/// (`{EST_PATH}/cacerts`, `{EST_PATH}/simpleenroll`). Regular expressions are judged by whether
/// they name the path, which is enough to explain why such a location does not relay EST.
fn location_matches_est(args: &[String]) -> bool {
    let requests = [
        format!("{EST_PATH}/cacerts"),
        format!("{EST_PATH}/simpleenroll"),
    ];
    // nginx also takes the modifier joined to the URI (`~^/registry/`, `=/x`).
    let (modifier, uri) = match args {
        [m, uri] => (m.as_str(), uri.as_str()),
        [uri] if uri.starts_with("~*") => ("~*", &uri[2..]),
        [uri] if uri.starts_with("^~") => ("^~", &uri[2..]),
        [uri] if uri.starts_with(['~', '=']) => (&uri[..1], &uri[1..]),
        [uri] => ("", uri.as_str()),
        _ => return false,
    };
    match modifier {
        "" | "^~" => requests.iter().any(|r| r.starts_with(uri)),
        "=" => requests.iter().any(|r| r == uri),
        "~" | "~*" => {
            let plain = uri.replace('\\', "").to_ascii_lowercase();
            plain.contains(EST_PATH.trim_start_matches('/'))
        }
        _ => false,
    }
}

#[cfg(test)]
#[path = "tests/gateway.rs"]
mod tests;
