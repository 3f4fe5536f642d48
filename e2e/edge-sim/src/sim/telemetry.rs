//! Telemetry: SimulatedTemperatureSensor modules send readings, which go up the chain of
//! parents hop by hop until a top-layer device posts them to the hub.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Device, Inner, SENSOR_IMAGE_MARKER, lock, read};
use crate::link::{Request, exchange};

/// A telemetry message on its way up.
pub(super) struct Message {
    pub(super) device_id: String,
    pub(super) module_id: String,
    pub(super) token: Option<String>,
    pub(super) body: Value,
    pub(super) hops: Vec<String>,
}

impl Inner {
    /// Sends one reading from each running SimulatedTemperatureSensor module of the device.
    pub(super) async fn send_telemetry(self: &Arc<Self>, device: &Arc<Device>) {
        let sensors: Vec<String> = {
            let state = lock(&device.state);
            let Some(deployment) = &state.deployment else {
                return;
            };
            state
                .modules
                .iter()
                .filter(|(name, record)| {
                    record.runtime_status == "running"
                        && deployment
                            .modules
                            .get(*name)
                            .is_some_and(|m| m.spec.image.contains(SENSOR_IMAGE_MARKER))
                })
                .map(|(name, _)| name.clone())
                .collect()
        };
        if sensors.is_empty() || device.material.is_none() {
            return;
        }
        let hub_running = lock(&device.state).edge_hub_running;
        for module in sensors {
            let counters = &device.counters;
            if !hub_running {
                counters.fail(
                    &counters.send_failed,
                    &format!("edgeHub is not running on {}", device.id),
                );
                continue;
            }
            let n = counters.sent.load(Ordering::Relaxed)
                + counters.send_failed.load(Ordering::Relaxed);
            let message = Message {
                device_id: device.id.clone(),
                module_id: module.clone(),
                token: device.token(),
                body: sensor_reading(n),
                hops: vec![device.id.clone()],
            };
            match self.deliver(device, &message).await {
                Ok(()) => {
                    let sent = counters.sent.fetch_add(1, Ordering::Relaxed) + 1;
                    let via = if device.is_top() {
                        "directly".to_string()
                    } else {
                        format!("via {}", device.parent_hostname.as_deref().unwrap_or("?"))
                    };
                    tracing::info!(
                        "device {}: {module} message delivered {via} (sent {sent})",
                        device.id
                    );
                }
                Err(e) => {
                    counters.fail(&counters.send_failed, &e);
                    tracing::warn!("device {}: {module} message not delivered: {e}", device.id);
                }
            }
        }
    }

    /// Passes a message one hop up: a top-layer device posts it to the hub with the sender's
    /// credential, any other device hands it to its parent over TLS.
    pub(super) fn deliver<'a>(
        self: &'a Arc<Self>,
        via: &'a Arc<Device>,
        message: &'a Message,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if via.is_top() {
                return self.post_to_hub(via, message).await;
            }
            let parent = via.parent_hostname.clone().unwrap_or_default();
            let material = via
                .material
                .as_ref()
                .ok_or_else(|| format!("device {} has no running runtime", via.id))?;
            let addr = read(&self.names)
                .get(&parent.to_ascii_lowercase())
                .copied()
                .ok_or_else(|| {
                    via.counters
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    format!("{}: parent hostname {parent} does not resolve", via.id)
                })?;
            let request = Request::Telemetry {
                device_id: message.device_id.clone(),
                module_id: message.module_id.clone(),
                token: message.token.clone(),
                body: message.body.clone(),
                hops: message.hops.clone(),
            };
            let reply = exchange(&material.trust_roots, &parent, addr, &request).await;
            via.counters.count_exchange(&reply);
            let reply = reply.map_err(|e| format!("{} → {parent}: {e}", via.id))?;
            match reply.error {
                None if reply.ok => Ok(()),
                error => Err(format!("{parent} refused: {}", error.unwrap_or_default())),
            }
        })
    }

    /// Posts a message to the hub as a top-layer device's edgeHub does.
    async fn post_to_hub(&self, top: &Arc<Device>, message: &Message) -> Result<(), String> {
        // SAS senders' tokens travel with the message; an X509 sender's credential is its TLS
        // client certificate, which the simulation holds in the sender's own hub client.
        let client = if message.token.is_some() {
            top.hub.clone()
        } else {
            read(&self.devices)
                .get(&message.device_id)
                .and_then(|d| d.hub.clone())
        }
        .ok_or_else(|| format!("{} has no hub client to post with", top.id))?;
        let token = message.token.as_deref();
        // A leaf device's own messages have no module.
        let module = Some(message.module_id.as_str()).filter(|m| !m.is_empty());
        let result = client
            .send_event(&message.device_id, module, &message.body, token)
            .await;
        let result = match result {
            Err(e) if e.code.as_deref() == Some("ModuleNotFound") || e.status == Some(404) => {
                // A real edgeAgent registers module identities; device credentials cannot in
                // the emulator, so the message goes to the device route instead.
                let key = format!("{}/{}", message.device_id, message.module_id);
                let first = lock(&top.state).device_route_noted.insert(key.clone());
                if first {
                    tracing::warn!(
                        "device {}: module identity {key} is not registered in the hub; posting its telemetry on the device route of {}",
                        top.id,
                        message.device_id
                    );
                }
                client
                    .send_event(&message.device_id, None, &message.body, token)
                    .await
            }
            other => other,
        };
        match result {
            Ok(()) => {
                top.counters.posted_to_hub.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(e.message),
        }
    }
}

/// A SimulatedTemperatureSensor-shaped reading.
fn sensor_reading(n: u64) -> Value {
    let t = n as f64;
    json!({
        "machine": {"temperature": 21.0 + (t * 0.37) % 80.0, "pressure": 1.0 + (t * 0.05) % 9.0},
        "ambient": {"temperature": 20.5 + (t * 0.01) % 1.0, "humidity": 25},
        "timeCreated": jiff::Timestamp::now().to_string(),
    })
}
