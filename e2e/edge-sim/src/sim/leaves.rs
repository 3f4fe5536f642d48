//! Leaf devices: each connects to the parent its connection string names (`GatewayHostName`)
//! over TLS, trusting only its bundle's root, announces itself to the parent's edgeHub, and
//! sends one message per tick through the parent with its own SAS token; the top of the chain
//! posts it to the hub, which checks the token. So a leaf only counts messages as sent when its
//! bundle's key, gateway and trust chain all work.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::json;

use super::{Inner, TOKEN_TTL_SECS, device_token, lock, now_secs, read, write};
use crate::leaf::{LeafConfig, parse_leaf_bundle};
use crate::link::{Request, exchange};
use crate::source::Bundle;

/// One installed leaf bundle.
pub(super) struct Leaf {
    id: String,
    origin: String,
    fingerprint: String,
    config: Result<LeafConfig, String>,
    state: Arc<LeafState>,
}

#[derive(Default)]
pub(super) struct LeafState {
    connected: Mutex<(bool, String)>,
    sent: AtomicU64,
    send_failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What the simulation knows about one leaf device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeafSnapshot {
    pub device_id: String,
    /// Where its bundle came from.
    pub origin: String,
    /// Bundle fingerprint in use.
    pub bundle_fingerprint: String,
    /// Why the bundle cannot be used.
    pub failure: Option<String>,
    /// `GatewayHostName` of its connection string.
    pub gateway_hostname: Option<String>,
    /// The last TLS connection to the gateway and its edgeHub's answer worked.
    pub connected: bool,
    /// What happened on the last attempt.
    pub detail: String,
    /// Messages the hub accepted.
    pub sent: u64,
    /// Messages that did not get there.
    pub send_failed: u64,
    /// The last delivery error.
    pub last_error: Option<String>,
}

impl Inner {
    /// Takes the leaf bundles: new fingerprints replace the leaf (its counts carry over),
    /// leaves whose bundle is gone stop.
    pub(super) fn sync_leaves(&self, bundles: Vec<Bundle>) {
        let present: BTreeSet<String> = bundles.iter().map(|b| b.device_id.clone()).collect();
        for bundle in bundles {
            let fingerprint = bundle.fingerprint();
            let previous = read(&self.leaves).get(&bundle.device_id).cloned();
            if previous
                .as_ref()
                .is_some_and(|l| l.fingerprint == fingerprint)
            {
                continue;
            }
            let config = parse_leaf_bundle(&bundle.files);
            match &config {
                Ok(c) => tracing::info!(
                    "leaf {}: bundle {fingerprint} read; gateway {}",
                    bundle.device_id,
                    c.gateway_hostname
                        .as_deref()
                        .unwrap_or("none (straight to the hub)")
                ),
                Err(e) => tracing::warn!("leaf {}: bundle unusable: {e}", bundle.device_id),
            }
            let leaf = Leaf {
                id: bundle.device_id.clone(),
                origin: bundle.origin.clone(),
                fingerprint,
                config,
                state: previous.map(|l| l.state.clone()).unwrap_or_default(),
            };
            write(&self.leaves).insert(leaf.id.clone(), Arc::new(leaf));
        }
        write(&self.leaves).retain(|id, _| present.contains(id));
    }

    /// One attempt of one leaf: connect through the gateway, then send a message.
    pub(super) async fn run_leaf(&self, leaf: &Arc<Leaf>) {
        let Ok(config) = &leaf.config else {
            return;
        };
        let result = self.leaf_exchange(config).await;
        let state = &leaf.state;
        match result {
            Ok(detail) => {
                *lock(&state.connected) = (true, detail);
                state.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err((connected, why)) => {
                if !lock(&state.connected).0 || !connected {
                    tracing::warn!("leaf {}: {why}", leaf.id);
                }
                *lock(&state.connected) = (connected, why.clone());
                state.send_failed.fetch_add(1, Ordering::Relaxed);
                *lock(&state.last_error) = Some(why);
            }
        }
    }

    /// Ok(what happened), or Err((whether the gateway link worked, why the message failed)).
    async fn leaf_exchange(&self, config: &LeafConfig) -> Result<String, (bool, String)> {
        let Some(gateway) = &config.gateway_hostname else {
            return Err((
                false,
                "no GatewayHostName: a leaf that talks to the hub directly is not simulated".into(),
            ));
        };
        let addr = read(&self.names)
            .get(&gateway.to_ascii_lowercase())
            .copied()
            .ok_or_else(|| {
                (
                    false,
                    format!("gateway {gateway} does not resolve (no running device has it)"),
                )
            })?;
        let connect = Request::Connect {
            device_id: config.device_id.clone(),
        };
        let reply = exchange(&config.trust_roots, gateway, addr, &connect)
            .await
            .map_err(|e| (false, e.to_string()))?;
        if let Some(e) = reply.error {
            return Err((true, format!("TLS to {gateway} verified; {e}")));
        }
        let key = config.shared_access_key.as_deref().ok_or_else(|| {
            (
                true,
                "an X.509 leaf's messages are not simulated (only SAS leaves)".to_string(),
            )
        })?;
        let token = device_token(
            &config.hub_hostname,
            &config.device_id,
            key,
            now_secs() + TOKEN_TTL_SECS,
        )
        .map_err(|e| (true, e))?;
        let message = Request::Telemetry {
            device_id: config.device_id.clone(),
            module_id: String::new(),
            token: Some(token),
            body: json!({"leaf": config.device_id, "timeCreated": jiff::Timestamp::now().to_string()}),
            hops: vec![config.device_id.clone()],
        };
        let reply = exchange(&config.trust_roots, gateway, addr, &message)
            .await
            .map_err(|e| (true, e.to_string()))?;
        match reply.error {
            None if reply.ok => Ok(format!(
                "TLS to {gateway} verified; message delivered to the hub through it"
            )),
            error => Err((
                true,
                format!("{gateway} did not deliver: {}", error.unwrap_or_default()),
            )),
        }
    }

    pub(super) fn leaf_snapshots(&self) -> BTreeMap<String, LeafSnapshot> {
        read(&self.leaves)
            .values()
            .map(|leaf| {
                let (connected, detail) = lock(&leaf.state.connected).clone();
                let snapshot = LeafSnapshot {
                    device_id: leaf.id.clone(),
                    origin: leaf.origin.clone(),
                    bundle_fingerprint: leaf.fingerprint.clone(),
                    failure: leaf.config.as_ref().err().cloned(),
                    gateway_hostname: leaf
                        .config
                        .as_ref()
                        .ok()
                        .and_then(|c| c.gateway_hostname.clone()),
                    connected,
                    detail,
                    sent: leaf.state.sent.load(Ordering::Relaxed),
                    send_failed: leaf.state.send_failed.load(Ordering::Relaxed),
                    last_error: lock(&leaf.state.last_error).clone(),
                };
                (leaf.id.clone(), snapshot)
            })
            .collect()
    }
}
