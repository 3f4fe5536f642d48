//! The install phase: bundles become devices. New bundle revisions are installed as
//! `install.sh` would (hostnames filled in, the parent's from the hub's device tree when the
//! bundle asks for it), checked as `iotedge check` would, and a device whose checks pass serves
//! its edgeHub endpoint; devices whose bundle is gone are stopped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::links::Handler;
use super::{Counters, Device, DeviceState, Inner, lock, now_secs, read, write};
use crate::checks::{Check, CheckContext, CheckReport, CheckStatus, run_checks};
use crate::config::{
    EdgeConfig, HOSTNAME_PLACEHOLDER, PARENT_HOSTNAME_PLACEHOLDER, device_slug, fill_placeholders,
    parse_config,
};
use crate::hub::{HubTree, query_tree};
use crate::install::{install_files, plan_install};
use crate::link::serve;
use crate::source::Bundle;

/// Least time between two reads of the hub's tree while a parent hostname is still unknown.
const TREE_RETRY: Duration = Duration::from_secs(10);

/// The hub's device tree as last read, and for which bundles.
#[derive(Default)]
pub(super) struct TreeCache {
    tree: Option<HubTree>,
    key: String,
    fetched_at: Option<Instant>,
    error: Option<String>,
}

/// What one bundle says about hostnames before installation.
struct Prepared {
    bundle: Bundle,
    text: Option<String>,
    raw: Result<EdgeConfig, String>,
    hostname: Option<String>,
}

impl Inner {
    /// Installs new bundle revisions and removes devices whose bundle is gone.
    pub(super) async fn sync_bundles(self: &Arc<Self>, bundles: Vec<Bundle>) {
        let prepared: Vec<Prepared> = bundles
            .into_iter()
            .map(|bundle| self.prepare(bundle))
            .collect();
        let needs_tree = prepared.iter().any(|p| {
            p.raw
                .as_ref()
                .is_ok_and(|c| c.parent_hostname.as_deref() == Some(PARENT_HOSTNAME_PLACEHOLDER))
        });
        let tree = if needs_tree {
            self.tree_for(&prepared).await
        } else {
            None
        };
        let hostnames: BTreeMap<&str, &str> = prepared
            .iter()
            .filter_map(|p| Some((p.bundle.device_id.as_str(), p.hostname.as_deref()?)))
            .collect();
        let present: BTreeSet<String> = prepared
            .iter()
            .map(|p| p.bundle.device_id.clone())
            .collect();
        for p in &prepared {
            let parent_hostname: Result<Option<String>, String> =
                match p.raw.as_ref().ok().and_then(|c| c.parent_hostname.clone()) {
                    Some(h) if h == PARENT_HOSTNAME_PLACEHOLDER => self
                        .placeholder_parent(&p.bundle.device_id, tree.as_ref(), &hostnames)
                        .map(Some),
                    other => Ok(other),
                };
            let fingerprint = p.bundle.fingerprint();
            let install_key = format!(
                "{fingerprint}|{}|{}",
                p.hostname.as_deref().unwrap_or(""),
                parent_hostname
                    .as_ref()
                    .ok()
                    .cloned()
                    .flatten()
                    .unwrap_or_default()
            );
            let existing = read(&self.devices).get(&p.bundle.device_id).cloned();
            if existing
                .as_ref()
                .is_some_and(|d| d.install_key == install_key)
            {
                continue;
            }
            let device = self
                .install(
                    p,
                    parent_hostname,
                    fingerprint,
                    install_key,
                    tree.as_ref(),
                    existing.as_deref(),
                )
                .await;
            write(&self.devices).insert(device.id.clone(), Arc::new(device));
        }
        let gone: Vec<String> = read(&self.devices)
            .keys()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            tracing::info!("device {id}: its bundle is gone; stopping it");
            write(&self.devices).remove(&id);
        }
        self.refresh_names();
    }

    /// What a bundle says about hostnames before installation: its config.toml, parsed, and
    /// its own hostname (an assigned one for the placeholder).
    fn prepare(&self, bundle: Bundle) -> Prepared {
        let text = bundle
            .files
            .get("config.toml")
            .and_then(|b| String::from_utf8(b.clone()).ok());
        let raw = match &text {
            Some(t) => parse_config(t),
            None => Err("the bundle has no config.toml (or it is not UTF-8)".into()),
        };
        let hostname = match raw.as_ref().ok().and_then(|c| c.hostname.clone()) {
            Some(h) if h == HOSTNAME_PLACEHOLDER => Some(format!(
                "{}.{}",
                device_slug(&bundle.device_id),
                self.domain
            )),
            other => other,
        };
        Prepared {
            bundle,
            text,
            raw,
            hostname,
        }
    }

    /// Points each running device's hostname at its edgeHub server.
    fn refresh_names(&self) {
        let names: HashMap<String, std::net::SocketAddr> = read(&self.devices)
            .values()
            .filter_map(|d| {
                Some((
                    d.hostname.clone()?.to_ascii_lowercase(),
                    d.server.as_ref()?.addr,
                ))
            })
            .collect();
        *write(&self.names) = names;
    }

    async fn tree_for(&self, prepared: &[Prepared]) -> Option<HubTree> {
        let key: String = prepared
            .iter()
            .map(|p| format!("{}={};", p.bundle.device_id, p.bundle.fingerprint()))
            .collect();
        let (stale, unresolved) = {
            let cache = lock(&self.tree);
            let unresolved = cache.tree.as_ref().is_none_or(|tree| {
                prepared.iter().any(|p| {
                    p.raw.as_ref().is_ok_and(|c| {
                        c.parent_hostname.as_deref() == Some(PARENT_HOSTNAME_PLACEHOLDER)
                    }) && tree.get(&p.bundle.device_id).cloned().flatten().is_none()
                })
            });
            let old = cache.fetched_at.is_none_or(|t| t.elapsed() >= TREE_RETRY);
            (cache.key != key, unresolved && old)
        };
        if stale || unresolved {
            let result = query_tree(&self.endpoint, &self.emulator_dir, now_secs()).await;
            let mut cache = lock(&self.tree);
            cache.fetched_at = Some(Instant::now());
            cache.key = key;
            match result {
                Ok(tree) => {
                    cache.tree = Some(tree);
                    cache.error = None;
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    if cache.error.as_deref() != Some(&message) {
                        tracing::warn!("edge-sim: cannot read the hub's device tree: {message}");
                    }
                    cache.error = Some(message);
                }
            }
        }
        lock(&self.tree).tree.clone()
    }

    fn placeholder_parent(
        &self,
        device_id: &str,
        tree: Option<&HubTree>,
        hostnames: &BTreeMap<&str, &str>,
    ) -> Result<String, String> {
        let Some(tree) = tree else {
            let why = lock(&self.tree)
                .error
                .clone()
                .unwrap_or_else(|| "it has not been read yet".into());
            return Err(format!(
                "config.toml asks for the parent's hostname ({PARENT_HOSTNAME_PLACEHOLDER}), and the hub's device tree that names the parent cannot be read: {why}"
            ));
        };
        let parent = tree.get(device_id).cloned().flatten().ok_or_else(|| {
            format!("config.toml asks for the parent's hostname ({PARENT_HOSTNAME_PLACEHOLDER}), but the hub lists no parent for {device_id} yet")
        })?;
        hostnames.get(parent.as_str()).map(|h| h.to_string()).ok_or_else(|| {
            format!("the parent {parent} of {device_id} has no bundle in this hierarchy yet, so its hostname is unknown")
        })
    }

    /// Installs one bundle revision: the files as `install.sh` would, the checks as `iotedge check`
    /// would, then the runtime as far as the checks allow. The state and counters of `previous`
    /// (the revision it replaces) carry over.
    async fn install(
        self: &Arc<Self>,
        p: &Prepared,
        parent_hostname: Result<Option<String>, String>,
        fingerprint: String,
        install_key: String,
        tree: Option<&HubTree>,
        previous: Option<&Device>,
    ) -> Device {
        let id = p.bundle.device_id.clone();
        let (state, counters) = match previous {
            Some(prev) => (prev.state.clone(), prev.counters.clone()),
            None => (
                Arc::new(Mutex::new(DeviceState::new())),
                Arc::new(Counters::default()),
            ),
        };
        let mut device = Device {
            id: id.clone(),
            origin: p.bundle.origin.clone(),
            root: self.state_dir.join(device_slug(&id)),
            fingerprint,
            install_key,
            hostname: p.hostname.clone(),
            parent_hostname: None,
            checks: Vec::new(),
            failure: None,
            material: None,
            hub: None,
            sas_key: None,
            server: None,
            state,
            counters,
        };
        match install_and_check(&mut device, p, parent_hostname, tree) {
            Ok((config, report)) => self.start_runtime(&mut device, &config, report).await,
            Err((check, detail)) => {
                tracing::warn!("device {id}: not started: {check}: {detail}");
                device.checks = vec![Check {
                    id: check,
                    status: CheckStatus::Failed,
                    detail: detail.clone(),
                }];
                device.failure = Some(format!("{check}: {detail}"));
            }
        }
        device
    }

    /// Takes the checks' verdict: a hub client with the bundle's credentials, and the edgeHub
    /// server when the checks yielded the device's material.
    async fn start_runtime(
        self: &Arc<Self>,
        device: &mut Device,
        config: &EdgeConfig,
        report: CheckReport,
    ) {
        let id = device.id.clone();
        device.checks = report.checks.clone();
        device.failure = report.first_failure();
        device.sas_key = config.provisioning.shared_access_key().map(str::to_string);
        let identity_pem = report
            .material
            .as_ref()
            .and_then(|m| m.identity_pem.clone());
        if device.sas_key.is_some() || identity_pem.is_some() {
            match self.endpoint.client(
                config.provisioning.iothub_hostname(),
                identity_pem.as_deref(),
            ) {
                Ok(client) => device.hub = Some(client),
                Err(e) => tracing::warn!("device {id}: no hub client: {e}"),
            }
        }
        for check in &report.checks {
            if check.status == CheckStatus::Warning {
                tracing::warn!("device {id}: check {}: {}", check.id, check.detail);
            }
        }
        match (&report.material, &device.failure) {
            (Some(material), _) => {
                let handler = Arc::new(Handler {
                    inner: Arc::downgrade(self),
                    device_id: id.clone(),
                });
                match serve(&material.server_identity, handler).await {
                    Ok(server) => {
                        tracing::info!(
                            "device {id}: installed bundle {} in {}; checks passed; edgeHub serves {} on {}{}",
                            device.fingerprint,
                            device.root.display(),
                            material.hostname,
                            server.addr,
                            material
                                .parent_hostname
                                .as_deref()
                                .map(|p| format!("; parent {p}"))
                                .unwrap_or_default()
                        );
                        device.server = Some(server);
                    }
                    Err(e) => {
                        device.failure =
                            Some(format!("edgehub-server: cannot listen on 127.0.0.1: {e}"));
                    }
                }
                device.material = Some(material.clone());
            }
            (None, Some(failure)) => {
                tracing::warn!(
                    "device {id}: installed bundle {} but the runtime does not start: check {failure}",
                    device.fingerprint
                );
            }
            (None, None) => {}
        }
    }
}

/// Fills the hostnames into the bundle's config.toml, installs its files into the device's root
/// and runs the checks; or names the check that failed first and why.
fn install_and_check(
    device: &mut Device,
    p: &Prepared,
    parent_hostname: Result<Option<String>, String>,
    tree: Option<&HubTree>,
) -> Result<(EdgeConfig, CheckReport), (&'static str, String)> {
    let (Some(text), Ok(_)) = (&p.text, &p.raw) else {
        let detail = p.raw.as_ref().err().cloned().unwrap_or_default();
        return Err(("config-toml", detail));
    };
    let parent_hostname = parent_hostname.map_err(|e| ("parent-hostname", e))?;
    device.parent_hostname = parent_hostname.clone();
    let hostname = p.hostname.clone().unwrap_or_default();
    let filled = fill_placeholders(text, &hostname, parent_hostname.as_deref());
    let config = parse_config(&filled).map_err(|e| ("config-toml", e))?;
    let planned = plan_install(&config, &p.bundle.files).map_err(|e| ("bundle-files", e))?;
    let root = &device.root;
    install_files(root, &filled, &planned, &p.bundle.files).map_err(|e| {
        (
            "bundle-files",
            format!("installing into {} failed: {e}", root.display()),
        )
    })?;
    let report = run_checks(
        &filled,
        &CheckContext {
            device_id: &device.id,
            root,
            has_parent_in_tree: tree.and_then(|t| t.get(&device.id)).map(Option::is_some),
            now: now_secs(),
        },
    );
    Ok((config, report))
}
