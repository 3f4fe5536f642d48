//! The bundle step (docs/architecture.md, "Certificates and bundles"): one Secret per registered
//! device holding the files of its bundle (config.toml, install.sh, README, trust bundle,
//! edge CA chain and key, identity), rewritten when any of them changes, with a revision that
//! counts changes.
//!
//! Observe (bundle Secrets; device keys only the hub knows), plan ([`plan`], pure), apply.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use super::certs::Certificates;
use super::devices::{HubDevice, SasKeys};
use super::error::Error;
use super::scope::Scope;
use super::secrets::SecretWrite;
use crate::api::{BundleStatus, Topology};
use crate::deploy::RegistryLogin;
use crate::iothub::{HubClient, HubError};
use crate::names::BUNDLE_COMPONENT;
use plan::BundlePlanInput;

/// Outcome per device, plus the devices whose bundle changed.
#[derive(Debug, Default)]
pub struct Bundles {
    pub status: BTreeMap<String, BundleStatus>,
    pub updated: Vec<String>,
    /// Devices whose bundle could not be rendered, with the reason (names the field).
    pub failures: BTreeMap<String, String>,
    /// Devices whose SAS key was changed in the hub outside the operator; their bundles now
    /// carry the new key.
    pub key_changed: Vec<String>,
    /// Failures that waiting does not fix (see `plan::BundlePlan::withheld`).
    pub withheld: BTreeSet<String>,
    /// A SAS key read failed (the registry quota, say): the bundles planned without it were
    /// written, and the reconcile fails once their Events are out, so none is lost.
    pub read_failed: Option<HubError>,
}

impl Bundles {
    /// Whether a failure may pass by itself, so the hierarchy is reconciled again soon.
    pub fn retry_soon(&self) -> bool {
        self.failures.keys().any(|id| !self.withheld.contains(id))
    }

    /// Adds devices whose bundle an earlier pass of this reconcile wrote.
    pub fn add_updated(&mut self, earlier: Vec<String>) {
        for id in earlier {
            if !self.updated.contains(&id) {
                self.updated.push(id);
            }
        }
    }
}

/// Writes the bundle Secret of every Edge device that is registered in the hub.
pub async fn reconcile(
    scope: &Scope<'_>,
    topology: &Topology,
    registered: &BTreeMap<String, HubDevice>,
    certs: &Certificates,
    created_keys: &BTreeMap<String, SasKeys>,
    agent_auth: Option<&RegistryLogin>,
) -> Result<Bundles, Error> {
    let existing = scope.secrets.list_component(BUNDLE_COMPONENT).await?;
    let namespace = scope.hierarchy.namespace().unwrap_or_default();
    let input = BundlePlanInput {
        hierarchy: &scope.identity.name,
        namespace: &namespace,
        spec: &scope.hierarchy.spec,
        hub_hostname: scope.hub.host_name(),
        layers: &topology.layer,
        registered,
        certs,
        created_keys,
        existing: &existing,
        agent_auth,
        keep_removed: scope.hierarchy.spec.policy.leaves_removed_devices(),
        est: scope.ctx.est.as_ref(),
    };
    let mut read_keys = BTreeMap::new();
    // Keys read before a failed read are used: under a registry quota the bundles written now
    // need no read next time, so each retry gets further instead of starting over.
    let mut read_failed = None;
    for id in plan::keys_to_read(&input) {
        match primary_key(&scope.hub, &id).await {
            Ok(key) => {
                read_keys.insert(id.clone(), key);
            }
            Err(e) => {
                read_failed = Some(e);
                break;
            }
        }
    }
    let plan = plan::plan_bundles(&input, &read_keys);
    let writes: Vec<&SecretWrite> = plan.writes.iter().map(|(_, write)| write).collect();
    scope.secrets.apply_all(writes).await?;
    let updated = plan
        .writes
        .iter()
        .map(|(id, _)| id.clone())
        .filter(|id| !plan.annotations_only.contains(id))
        .collect();
    scope
        .secrets
        .delete_all(BUNDLE_COMPONENT, &plan.delete)
        .await?;
    Ok(Bundles {
        status: plan.status,
        updated,
        failures: plan.failures,
        key_changed: plan.key_changed,
        withheld: plan.withheld,
        read_failed,
    })
}

async fn primary_key(hub: &HubClient, id: &str) -> Result<String, HubError> {
    let device = hub.get_device(id).await?;
    Ok(device
        .authentication
        .and_then(|a| a.symmetric_key)
        .and_then(|k| k.primary_key)
        .unwrap_or_default())
}
