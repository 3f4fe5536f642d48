//! Deleting a hierarchy (behind the finalizer): under Delete (and Manage) its devices leave the
//! hub, children first, then its configurations; under Detach or Observe nothing in the hub is
//! touched and its Secrets are released, so they outlive it with the devices.

use kube::runtime::controller::Action as Requeue;

use super::controller::Context;
use super::credentials::CredentialError;
use super::error::Error;
use super::events::{Note, announce};
use super::secrets::SecretStore;
use super::sync::previously_registered;
use super::{deployments, devices};
use crate::api::{DeletionPolicy, EdgeHierarchy, ReconcilePolicy};
use crate::ownership::HierarchyIdentity;

pub async fn cleanup(hierarchy: &EdgeHierarchy, ctx: &Context) -> Result<Requeue, Error> {
    let policy = &hierarchy.spec.policy;
    if policy.deletion == DeletionPolicy::Detach || policy.reconcile == ReconcilePolicy::Observe {
        // The devices stay, so their certificates and bundles must too: release the Secrets
        // from the hierarchy before garbage collection would take them.
        let released = SecretStore::new(ctx.client.clone(), hierarchy, ctx.secrets.clone())
            .release_all()
            .await?;
        let note = format!(
            "hierarchy deleted; its hub devices and {released} Secrets (certificates, bundles, root CA) are left in place"
        );
        ctx.events
            .publish_all(hierarchy, vec![Note::normal("Detached", "Delete", note)])
            .await;
        ctx.memories.forget(&HierarchyIdentity::of(hierarchy).uid);
        return Ok(Requeue::await_change());
    }
    let hub = ctx.hubs.client_for(hierarchy).await.map_err(|e| {
        // Without credentials the devices cannot be deleted; say how to let go.
        Error::Credentials(CredentialError::Cleanup {
            detail: e.to_string(),
        })
    })?;
    let identity = HierarchyIdentity::of(hierarchy);
    // The devices in the status are deleted too when the ownership query does not show them
    // yet (a hierarchy deleted right after it created them).
    let registered = hierarchy
        .status
        .as_ref()
        .map(previously_registered)
        .unwrap_or_default();
    let memory = ctx.memories.of(&identity.uid);
    let mut memory = memory.lock().await;
    let rounds = devices::converge(
        &hub,
        &identity,
        policy,
        &[],
        &registered,
        &mut memory.devices,
        None,
    )
    .await?;
    if !rounds.failures.is_empty() {
        let failures: Vec<String> = rounds
            .failures
            .iter()
            .map(|(id, f)| format!("{id}: {f}"))
            .collect();
        return Err(Error::CleanupIncomplete(failures.join("; ")));
    }
    let deleted = &rounds.applied.deleted;
    let devices = announce(
        "Deleted",
        "Delete",
        "deleted",
        "devices from the hub",
        deleted,
    );
    ctx.events
        .publish_all(hierarchy, devices.into_iter().collect())
        .await;
    let configurations = deployments::delete_owned_configurations(&hub, &identity.uid).await;
    // The hub's configurations changed under the shared view: the next hierarchy lists afresh.
    ctx.configuration_views.forget(&hub).await;
    let configurations = configurations?;
    let notes = announce(
        "DeploymentDeleted",
        "Delete",
        "deleted",
        "configurations",
        &configurations,
    );
    ctx.events
        .publish_all(hierarchy, notes.into_iter().collect())
        .await;
    drop(memory);
    ctx.memories.forget(&identity.uid);
    Ok(Requeue::await_change())
}
