//! What one reconcile of one hierarchy works with, derived once: the hierarchy, its identity, its
//! Secrets, its hub client and the controller's shared state.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use super::controller::Context;
use super::secrets::SecretStore;
use crate::api::{EdgeHierarchy, EdgeHierarchyStatus};
use crate::iothub::HubClient;
use crate::names::MANAGER;
use crate::ownership::{HierarchyIdentity, ProofKey};

/// The per-reconcile scope of the steps that talk to the hub.
pub struct Scope<'a> {
    pub hierarchy: &'a EdgeHierarchy,
    pub identity: HierarchyIdentity,
    pub ctx: &'a Context,
    pub secrets: SecretStore,
    pub hub: HubClient,
}

impl<'a> Scope<'a> {
    /// `key` makes and checks the ownership proofs of the hierarchy's devices.
    pub fn new(
        hierarchy: &'a EdgeHierarchy,
        ctx: &'a Context,
        hub: HubClient,
        key: ProofKey,
    ) -> Self {
        Self {
            identity: HierarchyIdentity::of(hierarchy).with_key(Some(key)),
            secrets: SecretStore::new(ctx.client.clone(), hierarchy, ctx.secrets.clone()),
            hierarchy,
            ctx,
            hub,
        }
    }

    pub fn generation(&self) -> Option<i64> {
        self.hierarchy.metadata.generation
    }
}

/// The current time as Kubernetes writes it.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Writes the whole status by server-side apply (the operator owns every status field), cut
/// to what the object's size budget leaves it (`status::for_apply`), and hands the full status
/// to the fleet gauges of /metrics (their counts are exact).
pub async fn patch_status(
    ctx: &Context,
    hierarchy: &EdgeHierarchy,
    status: &EdgeHierarchyStatus,
) -> Result<(), kube::Error> {
    let namespace = hierarchy.namespace().unwrap_or_default();
    let api: Api<EdgeHierarchy> = Api::namespaced(ctx.client.clone(), &namespace);
    let written = super::status::for_apply(status, super::status::status_room(hierarchy));
    let patch = super::status::apply_patch(&written);
    api.patch_status(
        &hierarchy.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics
        .observe_status(&namespace, &hierarchy.name_any(), status);
    Ok(())
}
