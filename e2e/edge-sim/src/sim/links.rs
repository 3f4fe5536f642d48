//! Links and TLS: each child connects to its parent's edgeHub with only its bundle's trust
//! bundle, and each device's edgeHub answers its children's connections and telemetry.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use futures::future::BoxFuture;

use super::telemetry::Message;
use super::{Device, Inner, lock, read};
use crate::chain::LinkState;
use crate::link::{LinkHandler, Reply, Request, exchange};

/// A device's edgeHub as its children reach it.
pub(super) struct Handler {
    pub(super) inner: Weak<Inner>,
    pub(super) device_id: String,
}

impl LinkHandler for Handler {
    fn handle(&self, request: Request) -> BoxFuture<'_, Reply> {
        Box::pin(async move {
            let Some(inner) = self.inner.upgrade() else {
                return Reply::failed("the simulation is stopping");
            };
            let Some(device) = read(&inner.devices).get(&self.device_id).cloned() else {
                return Reply::failed(format!("device {} is not running", self.device_id));
            };
            let hub_running = lock(&device.state).edge_hub_running;
            match request {
                Request::Connect { device_id } => {
                    let mut state = lock(&device.state);
                    let now = Instant::now();
                    state.client_seen.insert(device_id, now);
                    if hub_running {
                        Reply::ok()
                    } else {
                        Reply::failed(format!("edgeHub is not running on {}", device.id))
                    }
                }
                Request::Telemetry {
                    device_id,
                    module_id,
                    token,
                    body,
                    mut hops,
                } => {
                    if !hub_running {
                        let why = format!("edgeHub is not running on {}", device.id);
                        device.counters.fail(&device.counters.forward_failed, &why);
                        return Reply::failed(why);
                    }
                    hops.push(device.id.clone());
                    let message = Message {
                        device_id,
                        module_id,
                        token,
                        body,
                        hops,
                    };
                    match inner.deliver(&device, &message).await {
                        Ok(()) => {
                            device.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                            Reply::ok()
                        }
                        Err(e) => {
                            device.counters.fail(&device.counters.forward_failed, &e);
                            Reply::failed(e)
                        }
                    }
                }
            }
        })
    }
}

impl Inner {
    /// Connects a child to its parent's edgeHub over TLS, trusting only its bundle's roots.
    pub(super) async fn check_link(&self, device: &Arc<Device>) {
        let (Some(material), Some(parent_hostname)) = (&device.material, &device.parent_hostname)
        else {
            return;
        };
        let addr = read(&self.names)
            .get(&parent_hostname.to_ascii_lowercase())
            .copied();
        let (link, detail) = match addr {
            None => {
                device
                    .counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                let why = format!(
                    "hostname {parent_hostname} does not resolve (no running device in the simulation has it)"
                );
                (LinkState::Down(why.clone()), why)
            }
            Some(addr) => {
                let request = Request::Connect {
                    device_id: device.id.clone(),
                };
                let result = exchange(&material.trust_roots, parent_hostname, addr, &request).await;
                device.counters.count_exchange(&result);
                match result {
                    Ok(reply) => (
                        LinkState::Up,
                        match reply.error {
                            None => format!(
                                "TLS to {parent_hostname} verified; edgeHub accepted the connection"
                            ),
                            Some(e) => format!("TLS to {parent_hostname} verified; {e}"),
                        },
                    ),
                    Err(e) => (LinkState::Down(e.to_string()), e.to_string()),
                }
            }
        };
        let mut state = lock(&device.state);
        if state.link != link {
            match &link {
                LinkState::Up => tracing::info!(
                    "device {}: link to parent {parent_hostname} up: {detail}",
                    device.id
                ),
                _ => tracing::warn!(
                    "device {}: link to parent {parent_hostname} down: {detail}",
                    device.id
                ),
            }
        }
        state.link = link;
        state.link_detail = detail;
    }
}
