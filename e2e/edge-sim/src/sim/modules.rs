//! Image pulls and modules: the chain rule decides which images each device can pull through its
//! parents, and the module records (edgeAgent, edgeHub, custom modules) follow the outcomes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{Device, Inner, lock};
use crate::chain::{DeviceNode, LinkState, ModuleOutcome, ModuleSpec, resolve_modules};
use crate::reported::{ModuleRecord, advance, twin_time};

impl Inner {
    /// Applies the chain rule to every device and updates the module records.
    pub(super) fn resolve(&self, devices: &[Arc<Device>]) {
        let outcomes = resolve_modules(&chain_nodes(devices));
        let now = twin_time(jiff::Timestamp::now());
        let empty = BTreeMap::new();
        for device in devices {
            let mine = outcomes.get(&device.id).unwrap_or(&empty);
            apply_outcomes(device, mine, &now);
        }
    }
}

/// Each device as the chain rule sees it: its parent, its link to it and the modules it wants
/// now (edgeAgent until it runs, then edgeHub and the deployment's modules).
fn chain_nodes(devices: &[Arc<Device>]) -> Vec<DeviceNode> {
    let by_hostname: HashMap<String, &str> = devices
        .iter()
        .filter_map(|d| Some((d.hostname.clone()?.to_ascii_lowercase(), d.id.as_str())))
        .collect();
    devices
        .iter()
        .map(|d| {
            let state = lock(&d.state);
            let parent = d.parent_hostname.as_ref().map(|h| {
                by_hostname
                    .get(&h.to_ascii_lowercase())
                    .map_or_else(|| format!("<{h}>"), |id| id.to_string())
            });
            let mut modules = Vec::new();
            if !state.agent_started {
                if let Some(m) = &d.material {
                    modules.push(ModuleSpec {
                        name: "edgeAgent".into(),
                        image: m.agent_image.clone(),
                        wants_running: true,
                        env: BTreeMap::new(),
                    });
                }
            } else if let Some(deployment) = &state.deployment {
                modules.push(deployment.edge_hub.spec.clone());
                modules.extend(deployment.modules.values().map(|m| m.spec.clone()));
            }
            DeviceNode {
                id: d.id.clone(),
                parent,
                link: if d.is_top() {
                    LinkState::Up
                } else {
                    state.link.clone()
                },
                runtime_up: d.material.is_some() && state.agent_started,
                modules,
            }
        })
        .collect()
}

/// Moves one device's module records on by the chain rule's outcomes for it (`mine`): a device
/// without a runtime has a failed edgeAgent and nothing else; edgeAgent starts first, then
/// edgeHub and the deployment's modules follow their outcomes.
fn apply_outcomes(device: &Device, mine: &BTreeMap<String, ModuleOutcome>, now: &str) {
    let mut state = lock(&device.state);
    if device.material.is_none() {
        let why = format!(
            "the edge runtime is not running: check {}",
            device.failure.as_deref().unwrap_or("failed")
        );
        if state.agent.runtime_status != "failed" || state.agent.status_description != why {
            state.agent.runtime_status = "failed".into();
            state.agent.status_description = why;
            state.agent.exit_code = 1;
            state.agent.last_exit_time_utc = Some(now.to_string());
        }
        state.agent_started = false;
        state.edge_hub = None;
        state.modules.clear();
        state.edge_hub_running = false;
        return;
    }
    if !state.agent_started {
        match mine.get("edgeAgent") {
            Some(ModuleOutcome::Running) => {
                tracing::info!(
                    "device {}: edgeAgent started ({})",
                    device.id,
                    device
                        .material
                        .as_ref()
                        .map(|m| m.agent_image.as_str())
                        .unwrap_or("")
                );
                state.agent_started = true;
                state.agent = advance(Some(&state.agent), &ModuleOutcome::Running, now);
            }
            Some(ModuleOutcome::Backoff(why)) => {
                let why = format!("edgeAgent {why}");
                if state.agent.status_description != why {
                    tracing::warn!("device {}: {why}", device.id);
                }
                state.agent = advance(Some(&state.agent), &ModuleOutcome::Backoff(why), now);
            }
            _ => {}
        }
        return;
    }
    state.agent = advance(Some(&state.agent), &ModuleOutcome::Running, now);
    let Some(deployment) = state.deployment.clone() else {
        return;
    };
    let previous_hub = state.edge_hub.clone();
    if let Some(outcome) = mine.get("edgeHub") {
        let record = advance(previous_hub.as_ref(), outcome, now);
        log_transition(&device.id, "edgeHub", previous_hub.as_ref(), &record);
        state.edge_hub_running = record.runtime_status == "running";
        state.edge_hub = Some(record);
    }
    let mut next = BTreeMap::new();
    for name in deployment.modules.keys() {
        if let Some(outcome) = mine.get(name) {
            let previous = state.modules.get(name);
            let record = advance(previous, outcome, now);
            log_transition(&device.id, name, previous, &record);
            next.insert(name.clone(), record);
        }
    }
    state.modules = next;
}

fn log_transition(
    device: &str,
    module: &str,
    previous: Option<&ModuleRecord>,
    next: &ModuleRecord,
) {
    let changed = previous.is_none_or(|p| {
        p.runtime_status != next.runtime_status || p.status_description != next.status_description
    });
    if !changed {
        return;
    }
    if next.runtime_status == "backoff" {
        tracing::warn!(
            "device {device}: module {module} backoff: {}",
            next.status_description
        );
    } else {
        tracing::info!("device {device}: module {module} {}", next.runtime_status);
    }
}
