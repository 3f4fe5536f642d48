//! Deleting a hierarchy (behind the finalizer): under Delete (and Manage) its devices leave the
//! hub, children first, then its configurations; under Detach or Observe nothing in the hub is
//! touched and its Secrets are released, so they outlive it with the devices.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;

use super::controller::Context;
use super::credentials::CredentialError;
use super::error::Error;
use super::events::{Note, announce};
use super::secrets::SecretStore;
use super::sync::previously_registered;
use super::{deployments, devices};
use crate::api::EdgeHierarchy;
use crate::ownership::HierarchyIdentity;

pub async fn cleanup(hierarchy: &EdgeHierarchy, ctx: &Context) -> Result<Requeue, Error> {
    let policy = &hierarchy.spec.policy;
    if policy.leaves_removed_devices() {
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
    let namespace = hierarchy.namespace().unwrap_or_default();
    // The devices in the status are deleted too when the ownership query does not show them
    // yet (a hierarchy deleted right after it created them).
    let registered = hierarchy
        .status
        .as_ref()
        .map(previously_registered)
        .unwrap_or_default();
    let hub = match ctx.hubs.client_for(hierarchy).await {
        Ok(hub) => hub,
        // The namespace controller deletes the hub Secret alongside the hierarchy: nobody can
        // bring it back, so waiting would hold the namespace forever. Let go, and say so.
        Err(e) if credentials_gone(&e) && namespace_terminating(ctx, &namespace).await => {
            let note = Note::warning(
                "HubCredentialsGone",
                "Delete",
                left_in_hub_message(&namespace, &e, &registered),
            );
            tracing::warn!(hierarchy = %HierarchyIdentity::of(hierarchy), "{}", note.note);
            ctx.events.publish_all(hierarchy, vec![note]).await;
            ctx.memories.forget(&HierarchyIdentity::of(hierarchy).uid);
            return Ok(Requeue::await_change());
        }
        // Without credentials the devices cannot be deleted; say how to let go.
        Err(e) => {
            return Err(Error::Credentials(CredentialError::Cleanup {
                detail: e.to_string(),
            }));
        }
    };
    // Only devices with the operator's proof, or in the status, are deleted: without the key
    // (the namespace's Secrets are going too) the status alone says which are ours.
    let key = ctx.proof_keys.existing(&namespace).await;
    let identity = HierarchyIdentity::of(hierarchy).with_key(key);
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
    let known = hierarchy
        .status
        .as_ref()
        .map(deployments::plan::known_configurations)
        .unwrap_or_default();
    let configurations = deployments::delete_owned_configurations(&hub, &identity, &known).await;
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

/// Whether the hub credentials are gone (not merely wrong or unreadable).
fn credentials_gone(error: &CredentialError) -> bool {
    matches!(
        error,
        CredentialError::MissingSecret { .. } | CredentialError::MissingKey { .. }
    )
}

/// Whether `namespace` is being deleted. A failed read counts as not: then the finalizer waits,
/// which loses nothing.
async fn namespace_terminating(ctx: &Context, namespace: &str) -> bool {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api.get_opt(namespace).await {
        Ok(Some(ns)) => {
            ns.metadata.deletion_timestamp.is_some()
                || ns.status.and_then(|s| s.phase).as_deref() == Some("Terminating")
        }
        Ok(None) => true,
        // In namespaced mode the operator may lack this read; the request is authorised in
        // the namespace itself, so a Role there granting `get` on namespaces is enough.
        Err(kube::Error::Api(e)) if e.is_forbidden() => {
            tracing::warn!(%namespace, "may not read the namespace (grant get on namespaces in it); treating it as not being deleted, so the hierarchy waits");
            false
        }
        Err(e) => {
            tracing::warn!(%namespace, "could not read the namespace: {e}");
            false
        }
    }
}

/// Most device ids a message names before it says how many more there are.
const NAMED_IDS: usize = 20;

/// What a hierarchy let go without its hub credentials leaves behind, for its Warning Event.
fn left_in_hub_message(
    namespace: &str,
    error: &CredentialError,
    registered: &BTreeSet<String>,
) -> String {
    let mut ids: Vec<&str> = registered
        .iter()
        .map(String::as_str)
        .take(NAMED_IDS)
        .collect();
    if registered.len() > NAMED_IDS {
        ids.push("...");
    }
    format!(
        "namespace {namespace:?} is being deleted and the hub credentials went with it ({error}), \
         so the hierarchy is let go without deleting its devices: {} device(s) stay in the hub \
         ({}); delete them there (az iot hub device-identity delete) or adopt them in another \
         hierarchy",
        registered.len(),
        if ids.is_empty() {
            "none recorded".to_string()
        } else {
            ids.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_credentials_let_a_terminating_namespace_go() {
        let missing = CredentialError::MissingSecret {
            namespace: "plant".into(),
            secret: "iothub-service".into(),
            field: "connectionStringSecretRef",
        };
        assert!(credentials_gone(&missing));
        assert!(credentials_gone(&CredentialError::MissingKey {
            secret: "iothub-service".into(),
            key: "connectionString".into(),
            field: "connectionStringSecretRef",
        }));
        // Unreadable or malformed credentials can still be fixed: the finalizer waits.
        assert!(!credentials_gone(&CredentialError::Unreadable {
            secret: "iothub-service".into(),
            detail: "timeout".into(),
            transient: true,
        }));
        assert!(!credentials_gone(&CredentialError::Malformed {
            secret: "iothub-service".into(),
            key: "connectionString".into(),
            detail: "no HostName".into(),
        }));
    }

    #[test]
    fn the_message_names_what_stays_in_the_hub() {
        let missing = CredentialError::MissingSecret {
            namespace: "plant".into(),
            secret: "iothub-service".into(),
            field: "connectionStringSecretRef",
        };
        let few: BTreeSet<String> = ["gw-1", "gw-2"].map(String::from).into();
        let message = left_in_hub_message("plant", &missing, &few);
        assert!(
            message.contains("2 device(s) stay in the hub (gw-1, gw-2)"),
            "{message}"
        );
        assert!(message.contains("\"iothub-service\""), "{message}");
        let many: BTreeSet<String> = (0..25).map(|i| format!("d-{i:02}")).collect();
        let message = left_in_hub_message("plant", &missing, &many);
        assert!(message.contains("25 device(s)") && message.ends_with("another hierarchy"));
        assert!(
            message.contains("d-19, ...") && !message.contains("d-20"),
            "{message}"
        );
        assert!(left_in_hub_message("plant", &missing, &BTreeSet::new()).contains("none recorded"));
    }
}
