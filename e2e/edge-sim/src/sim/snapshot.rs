//! What a tick leaves for callers: the state of every device, as plain data.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::{Device, Inner, lock};
use crate::chain::LinkState;
use crate::checks::Check;
use crate::reported::{DesiredStatus, ModuleRecord};

/// The state of one module as the simulation last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleSnapshot {
    /// `running`, `backoff`, `stopped`, ...
    pub runtime_status: String,
    /// Why (the pull failure for `backoff`).
    pub status_description: String,
    /// Desired image.
    pub image: String,
}

/// The TLS link of a child to its parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkSnapshot {
    /// The parent's hostname.
    pub parent_hostname: String,
    /// Handshake and exchange worked.
    pub ok: bool,
    /// What happened.
    pub detail: String,
    /// Every TLS handshake with the parent since the device started (link checks and
    /// telemetry), across bundle re-installations.
    pub counts: HandshakeCounts,
}

/// TLS handshakes of a child with its parent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HandshakeCounts {
    /// Handshakes begun (TCP connected).
    pub handshakes: u64,
    /// Of those, the ones that failed.
    pub handshake_failures: u64,
    /// Exchanges that never reached a handshake (TCP refused, nothing answered).
    pub connect_failures: u64,
    /// The last handshake failure.
    pub last_handshake_error: Option<String>,
}

/// Telemetry counts of one device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryCounts {
    /// Own messages that reached the hub.
    pub sent: u64,
    /// Own messages that did not.
    pub send_failed: u64,
    /// Children's messages passed on successfully.
    pub forwarded: u64,
    /// Children's messages it could not pass on.
    pub forward_failed: u64,
    /// Messages this (top-layer) device posted to the hub, own and forwarded.
    pub posted_to_hub: u64,
    /// The last delivery error.
    pub last_error: Option<String>,
}

/// Everything the simulation knows about one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSnapshot {
    /// Device id.
    pub device_id: String,
    /// Where its bundle came from.
    pub origin: String,
    /// Its install folder (stands for `/`).
    pub root: PathBuf,
    /// Hostname after installation.
    pub hostname: Option<String>,
    /// Parent hostname after installation.
    pub parent_hostname: Option<String>,
    /// Parent device id (the device serving `parent_hostname`).
    pub parent_id: Option<String>,
    /// Port of its edgeHub server on 127.0.0.1.
    pub port: Option<u16>,
    /// Bundle fingerprint installed.
    pub bundle_fingerprint: String,
    /// Install or check failure that keeps the runtime down.
    pub failure: Option<String>,
    /// The checks.
    pub checks: Vec<Check>,
    /// edgeAgent running.
    pub agent_running: bool,
    /// edgeAgent's runtime status and description.
    pub agent: ModuleSnapshot,
    /// The TLS link to the parent (below the top layer).
    pub link: Option<LinkSnapshot>,
    /// `$edgeAgent` desired `$version` last acted on.
    pub desired_version: Option<i64>,
    /// `lastDesiredStatus` reported.
    pub last_desired_status: DesiredStatus,
    /// edgeHub, when created.
    pub edge_hub: Option<ModuleSnapshot>,
    /// Custom modules.
    pub modules: BTreeMap<String, ModuleSnapshot>,
    /// Children connected to its edgeHub.
    pub clients: BTreeMap<String, String>,
    /// Telemetry counts.
    pub telemetry: TelemetryCounts,
    /// Reported-property patches sent.
    pub reported_patches: u64,
    /// Last error talking to the hub.
    pub hub_error: Option<String>,
}

/// The whole simulation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Completed polls.
    pub ticks: u64,
    /// Error of the last bundle listing.
    pub source_error: Option<String>,
    /// Devices by id.
    pub devices: BTreeMap<String, DeviceSnapshot>,
    /// Leaf devices (from leaf bundles) by id.
    pub leaves: BTreeMap<String, super::LeafSnapshot>,
}

impl Inner {
    /// The state of every device after a tick.
    pub(super) fn build_snapshot(
        &self,
        ticks: u64,
        source_error: Option<String>,
        devices: &[Arc<Device>],
    ) -> Snapshot {
        let by_hostname: HashMap<String, String> = devices
            .iter()
            .filter_map(|d| Some((d.hostname.clone()?.to_ascii_lowercase(), d.id.clone())))
            .collect();
        let module_snapshot = |record: &ModuleRecord, image: &str| ModuleSnapshot {
            runtime_status: record.runtime_status.clone(),
            status_description: record.status_description.clone(),
            image: image.to_string(),
        };
        let devices = devices
            .iter()
            .map(|d| {
                let state = lock(&d.state);
                let deployment = state.deployment.as_ref();
                let snapshot = DeviceSnapshot {
                    device_id: d.id.clone(),
                    origin: d.origin.clone(),
                    root: d.root.clone(),
                    hostname: d.hostname.clone(),
                    parent_hostname: d.parent_hostname.clone(),
                    parent_id: d
                        .parent_hostname
                        .as_ref()
                        .and_then(|h| by_hostname.get(&h.to_ascii_lowercase()).cloned()),
                    port: d.server.as_ref().map(|s| s.addr.port()),
                    bundle_fingerprint: d.fingerprint.clone(),
                    failure: d.failure.clone(),
                    checks: d.checks.clone(),
                    agent_running: d.material.is_some() && state.agent_started,
                    agent: module_snapshot(
                        &state.agent,
                        d.material
                            .as_ref()
                            .map(|m| m.agent_image.as_str())
                            .unwrap_or(""),
                    ),
                    link: d
                        .parent_hostname
                        .as_ref()
                        .filter(|_| d.material.is_some())
                        .map(|p| LinkSnapshot {
                            parent_hostname: p.clone(),
                            ok: state.link == LinkState::Up,
                            detail: state.link_detail.clone(),
                            counts: d.counters.links(),
                        }),
                    desired_version: state.desired_version,
                    last_desired_status: state.desired_status.clone(),
                    edge_hub: state.edge_hub.as_ref().map(|r| {
                        module_snapshot(
                            r,
                            deployment
                                .map(|dep| dep.edge_hub.spec.image.as_str())
                                .unwrap_or(""),
                        )
                    }),
                    modules: state
                        .modules
                        .iter()
                        .map(|(name, r)| {
                            let image = deployment
                                .and_then(|dep| dep.modules.get(name))
                                .map(|m| m.spec.image.as_str())
                                .unwrap_or("");
                            (name.clone(), module_snapshot(r, image))
                        })
                        .collect(),
                    clients: state
                        .clients
                        .iter()
                        .map(|(k, v)| (k.clone(), v.status.clone()))
                        .collect(),
                    telemetry: d.counters.snapshot(),
                    reported_patches: state.reported_patches,
                    hub_error: state.hub_error.clone(),
                };
                (d.id.clone(), snapshot)
            })
            .collect();
        Snapshot {
            ticks,
            source_error,
            devices,
            leaves: self.leaf_snapshots(),
        }
    }
}
