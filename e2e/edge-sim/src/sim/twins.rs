//! The hub connection: each device reads its `$edgeAgent` and `$edgeHub` twins with its
//! bundle's credentials and reports their properties when they changed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Device, DeviceState, Inner, lock};
use crate::reported::{
    AgentReport, ClientRecord, DesiredStatus, agent_reported, edge_hub_desired_status,
    edge_hub_reported, merge_patch, parse_agent_desired, strip_metadata, twin_time,
};

/// A child not seen for this many intervals counts as disconnected.
const CLIENT_STALE_INTERVALS: u32 = 3;

impl Inner {
    /// Reads the device's `$edgeAgent` twin (and `$edgeHub`'s when its runtime runs) and takes
    /// the desired deployment, as edgeAgent does.
    pub(super) async fn read_twins(&self, device: &Arc<Device>) {
        let Some(hub) = &device.hub else {
            return;
        };
        let token = device.token();
        let agent = hub
            .module_twin(&device.id, "$edgeAgent", token.as_deref())
            .await;
        let hub_twin = if device.material.is_some() {
            Some(
                hub.module_twin(&device.id, "$edgeHub", token.as_deref())
                    .await,
            )
        } else {
            None
        };
        let mut state = lock(&device.state);
        let mut error = None;
        match agent {
            Ok(twin) => {
                let desired = twin.get("desired").cloned().unwrap_or(Value::Null);
                state.agent_twin_reported =
                    Some(strip_metadata(twin.get("reported").unwrap_or(&Value::Null)));
                let version = desired.get("$version").and_then(Value::as_i64);
                if device.material.is_some() {
                    match parse_agent_desired(&desired) {
                        Ok(deployment) => {
                            if state.desired_version != version || state.desired_status.code != 200
                            {
                                tracing::info!(
                                    "device {}: applying $edgeAgent desired version {}",
                                    device.id,
                                    version.unwrap_or(0)
                                );
                            }
                            state.deployment = Some(deployment);
                            state.desired_status = DesiredStatus::ok();
                        }
                        Err(status) => {
                            if state.desired_status != status {
                                tracing::warn!(
                                    "device {}: desired deployment rejected ({}): {}",
                                    device.id,
                                    status.code,
                                    status.description
                                );
                            }
                            state.desired_status = status;
                        }
                    }
                } else {
                    state.desired_status = DesiredStatus {
                        code: 500,
                        description: format!(
                            "the edge runtime is not running: check {}",
                            device.failure.as_deref().unwrap_or("failed")
                        ),
                    };
                }
                state.desired_version = version;
            }
            Err(e) => error = Some(e.message),
        }
        match hub_twin {
            Some(Ok(twin)) => state.hub_twin = Some(twin),
            Some(Err(e)) => error = error.or(Some(e.message)),
            None => {}
        }
        if error != state.hub_error {
            if let Some(e) = &error {
                tracing::warn!("device {}: {e}", device.id);
            } else {
                tracing::info!("device {}: the hub answers again", device.id);
            }
        }
        state.hub_error = error;
    }

    /// Reports the `$edgeAgent` and `$edgeHub` properties that changed, as merge patches.
    pub(super) async fn report(&self, device: &Arc<Device>) {
        let Some(hub) = &device.hub else {
            return;
        };
        let (agent_patch, hub_patch) = {
            let mut state = lock(&device.state);
            if state.hub_error.is_some() || state.agent_twin_reported.is_none() {
                return;
            }
            let bootstrap = device
                .material
                .as_ref()
                .map(|m| m.agent_image.clone())
                .unwrap_or_default();
            let created = device.material.is_some() && state.agent_started;
            let agent_doc = agent_reported(&AgentReport {
                status: &state.desired_status,
                desired_version: state.desired_version,
                deployment: if created {
                    state.deployment.as_ref()
                } else {
                    None
                },
                agent: &state.agent,
                bootstrap_image: &bootstrap,
                edge_hub: state.edge_hub.as_ref(),
                modules: &state.modules,
                parent_hostname: device.parent_hostname.as_deref(),
            });
            let current = state.agent_twin_reported.clone().unwrap_or(Value::Null);
            let agent_patch = merge_patch(&prune_empty(&current), &prune_empty(&agent_doc));
            let hub_patch = if state.edge_hub_running {
                update_clients(&mut state, self.interval);
                let twin = state.hub_twin.clone().unwrap_or(Value::Null);
                let desired = twin.get("desired").cloned().unwrap_or(Value::Null);
                let status = edge_hub_desired_status(&desired);
                let version = desired.get("$version").and_then(Value::as_i64);
                let doc = edge_hub_reported(&status, version, &state.clients);
                let current = strip_metadata(twin.get("reported").unwrap_or(&Value::Null));
                merge_patch(&prune_empty(&current), &prune_empty(&doc))
            } else {
                None
            };
            (agent_patch, hub_patch)
        };
        let token = device.token();
        for (module, patch) in [("$edgeAgent", agent_patch), ("$edgeHub", hub_patch)] {
            let Some(patch) = patch else {
                continue;
            };
            match hub
                .patch_reported(&device.id, module, &patch, token.as_deref())
                .await
            {
                Ok(()) => {
                    let mut state = lock(&device.state);
                    state.reported_patches += 1;
                    if module == "$edgeAgent" {
                        state.agent_twin_reported = None;
                    }
                    tracing::info!(
                        "device {}: reported {module} properties ({} change(s))",
                        device.id,
                        patch.as_object().map_or(0, |o| o.len())
                    );
                }
                Err(e) => {
                    tracing::warn!("device {}: {}", device.id, e.message);
                    lock(&device.state).hub_error = Some(e.message);
                }
            }
        }
    }
}

/// Children seen within the last few intervals are connected; others that were are disconnected.
fn update_clients(state: &mut DeviceState, interval: Duration) {
    let now = twin_time(jiff::Timestamp::now());
    let stale = interval * CLIENT_STALE_INTERVALS;
    let seen: Vec<(String, bool)> = state
        .client_seen
        .iter()
        .map(|(id, at)| (id.clone(), at.elapsed() <= stale))
        .collect();
    for (id, connected) in seen {
        match (state.clients.get_mut(&id), connected) {
            (None, true) => {
                state.clients.insert(
                    id,
                    ClientRecord {
                        status: "connected".into(),
                        last_connected_time_utc: now.clone(),
                        last_disconnect_time_utc: None,
                    },
                );
            }
            (Some(record), true) if record.status != "connected" => {
                record.status = "connected".into();
                record.last_connected_time_utc = now.clone();
            }
            (Some(record), false) if record.status == "connected" => {
                record.status = "disconnected".into();
                record.last_disconnect_time_utc = Some(now.clone());
            }
            _ => {}
        }
    }
}

/// Removes empty objects (a merge patch cannot express them, and the hub may drop them).
fn prune_empty(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter_map(|(k, v)| {
                    let pruned = prune_empty(v);
                    match &pruned {
                        Value::Object(m) if m.is_empty() => None,
                        Value::Null => None,
                        _ => Some((k.clone(), pruned)),
                    }
                })
                .collect(),
        ),
        other => other.clone(),
    }
}
