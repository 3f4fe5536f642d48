//! One reconcile of a hierarchy that exists, top to bottom: validate, resolve manifests, open the
//! hub, then the steps (certificates; devices beside the deployments' configurations and the
//! certificate Secrets; bundles; the deployments' devices), each observe, plan, apply; then one
//! status. A step that fails ends the reconcile, and its error's disposition says
//! what follows ([`settle`]).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;

use super::controller::Context;
use super::devices::Registered;
use super::error::{Disposition, Error};
use super::events::{Note, certificate_notes, deployment_notes, device_notes};
use super::scope::{Scope, now, patch_status};
use super::status::{
    SyncOutcome, add_certificates, add_deployments, blocked_status, initial_status, synced_status,
};
use super::{bundles, certs, deployments, devices, registry_auth};
use crate::api::validate;
use crate::api::{
    DeviceState, EdgeHierarchy, EdgeHierarchyStatus, Topology, condition_type,
    duration::parse_duration,
};
use crate::deploy;

/// How soon a reconcile that left work undone (a device waiting, a write that failed) runs again.
const UNFINISHED_REQUEUE: Duration = Duration::from_secs(10);

/// Brings the hub to the spec (or, under Observe, reports how it differs).
pub async fn sync(hierarchy: &EdgeHierarchy, ctx: &Context) -> Result<Requeue, Error> {
    let previous = first_status(hierarchy, ctx).await?;
    match steps(hierarchy, ctx, &previous).await {
        Ok(requeue) => Ok(requeue),
        Err(error) => settle(hierarchy, ctx, &previous, error).await,
    }
}

async fn steps(
    hierarchy: &EdgeHierarchy,
    ctx: &Context,
    previous: &EdgeHierarchyStatus,
) -> Result<Requeue, Error> {
    // The spec, the manifests it points to and its registry Secrets are checked before anything
    // touches the hub or writes a Secret.
    let metrics = &ctx.metrics;
    let started = Instant::now();
    let topology = validate(&hierarchy.spec).map_err(Error::InvalidSpec)?;
    let manifests = deployments::resolve(&ctx.client, hierarchy).await?;
    let logins = registry_auth::read(&ctx.client, hierarchy).await?;
    let manifests = deploy::add_registry_credentials(manifests, &logins.deployments)
        .map_err(Error::InvalidManifests)?;
    let hub = ctx.hubs.client_for(hierarchy).await?;
    let key = ctx
        .proof_keys
        .get_or_create(&hierarchy.namespace().unwrap_or_default())
        .await?;
    let scope = Scope::new(hierarchy, ctx, hub, key);
    let policy = &hierarchy.spec.policy;
    metrics.step_done("spec", started);

    // Certificates first: X509 devices are registered with their identity thumbprints.
    let started = Instant::now();
    let (certificates, certificate_writes) =
        certs::reconcile(&scope, &topology, Timestamp::now()).await?;
    metrics.step_done("certificates", started);
    let mut sas_keys = certificates.sas_keys();
    sas_keys.extend(devices::new_leaf_keys(&hierarchy.spec));
    let desired = devices::desired_devices(
        &scope.identity,
        &hierarchy.spec,
        &topology,
        &certificates.hub_thumbprints(),
        &sas_keys,
    );
    let registered_before = previously_registered(previous);
    let known = deployments::plan::known_configurations(previous);
    let memory = ctx.memories.of(&scope.identity.uid);
    let mut memory = memory.lock().await;
    let memory = &mut *memory;
    // The hub's configurations are listed about once per resync interval for all hierarchies
    // of the hub; a sync asked for with `kubectl annotate` lists them afresh.
    let view_age = if memory.sync_requested(hierarchy.annotations()) {
        Duration::ZERO
    } else {
        resync_interval(hierarchy)
    };
    let (device_memory, agent_memory) = (&mut memory.devices, &mut memory.agents);
    // The devices and the configurations spend different quotas (registry, configuration), the
    // certificate Secrets none, and none of the three needs another, so they run side by side,
    // with the early bundles. All four run to their end, so none is cancelled halfway when
    // another fails.
    let started = Instant::now();
    let (progress, registered_so_far) = tokio::sync::watch::channel(Registered::default());
    let devices_step = async {
        let rounds = devices::converge(
            &scope.hub,
            &scope.identity,
            policy,
            &desired,
            &registered_before,
            device_memory,
            Some(progress),
        )
        .await;
        metrics.step_done("devices", started);
        rounds
    };
    // While lower layers are created, the bundles of the layers already in the hub are written.
    let early_bundles = early_bundles(
        &scope,
        &topology,
        &certificates,
        &desired,
        logins.agent.as_ref(),
        registered_so_far,
    );
    let configurations_step = async {
        let applied =
            deployments::reconcile_configurations(&scope, &topology, &manifests, &known, view_age)
                .await;
        metrics.step_done("configurations", started);
        applied
    };
    let certificate_secrets_step = async {
        let written = certificate_writes.apply(&scope).await;
        metrics.step_done("certificate_secrets", started);
        written
    };
    let (rounds, configurations, certificate_secrets, early_updated) = tokio::join!(
        devices_step,
        configurations_step,
        certificate_secrets_step,
        early_bundles,
    );
    let rounds = rounds?;
    publish(&scope, device_notes(&rounds, policy.reconcile)).await;
    certificate_secrets?;
    let configurations = configurations?;

    // Bundles need the registered devices (their keys and scopes), so they come after the hub.
    let owned = rounds.owned(&scope.identity);
    let started = Instant::now();
    let mut bundles = bundles::reconcile(
        &scope,
        &topology,
        &owned,
        &certificates,
        &devices::created_keys(&desired, &rounds.applied.created),
        logins.agent.as_ref(),
    )
    .await?;
    bundles.add_updated(early_updated.0);
    bundles.key_changed.extend(early_updated.1);
    metrics.step_done("bundles", started);
    publish(&scope, certificate_notes(&certificates, &bundles)).await;
    if let Some(e) = bundles.read_failed.take() {
        return Err(e.into());
    }

    let registered: BTreeSet<String> = owned.keys().cloned().collect();
    let started = Instant::now();
    let deployed = deployments::reconcile_devices(
        &scope,
        &topology,
        &manifests,
        &registered,
        configurations,
        agent_memory,
    )
    .await?;
    metrics.step_done("deployments", started);
    publish(&scope, deployment_notes(&deployed, policy.reconcile)).await;

    let order: Vec<String> = desired.iter().map(|d| d.id.clone()).collect();
    let outcome = SyncOutcome {
        policy: policy.reconcile,
        last: &rounds.last,
        drift: &rounds.drift,
        failures: &rounds.failures,
        order: &order,
    };
    let started = Instant::now();
    let (generation, at) = (scope.generation(), now());
    let mut status = synced_status(previous, &outcome, generation, &at);
    add_certificates(&mut status, &certificates, &bundles, generation, &at);
    add_deployments(&mut status, &deployed, policy.reconcile, generation, &at);
    patch_status(ctx, hierarchy, &status).await?;
    metrics.step_done("status", started);

    let unfinished = !rounds.converged() || bundles.retry_soon();
    Ok(next_requeue(
        unfinished,
        certificates.next_renewal(),
        resync_interval(hierarchy),
        Timestamp::now(),
    ))
}

/// Writes the bundles of the devices registered so far each time the device rounds publish
/// progress, until they end; returns the devices whose bundle it wrote, and those whose SAS key
/// it found changed in the hub. Whatever fails here is
/// left to the bundle step after the rounds, which plans every device again and reports.
async fn early_bundles(
    scope: &Scope<'_>,
    topology: &Topology,
    certificates: &certs::Certificates,
    desired: &[devices::DesiredDevice],
    agent_auth: Option<&crate::deploy::RegistryLogin>,
    mut registered: tokio::sync::watch::Receiver<Registered>,
) -> (Vec<String>, Vec<String>) {
    let (mut updated, mut key_changed) = (Vec::new(), Vec::new());
    while registered.changed().await.is_ok() {
        let so_far = registered.borrow_and_update().clone();
        let written = bundles::reconcile(
            scope,
            topology,
            &so_far.owned,
            certificates,
            &devices::created_keys(desired, &so_far.created),
            agent_auth,
        )
        .await;
        match written {
            Ok(written) => {
                updated.extend(written.updated);
                key_changed.extend(written.key_changed);
                if let Some(e) = written.read_failed {
                    tracing::debug!(error = %e, "early bundle writes stopped; the bundle step retries");
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "early bundle writes stopped; the bundle step retries");
                break;
            }
        }
    }
    (updated, key_changed)
}

/// The status to start from: on the very first reconcile `Ready=Unknown` is written at once, so
/// kstatus never reads the hierarchy as Current by default.
async fn first_status(
    hierarchy: &EdgeHierarchy,
    ctx: &Context,
) -> Result<EdgeHierarchyStatus, Error> {
    let previous = hierarchy.status.clone().unwrap_or_default();
    let first = !previous
        .conditions
        .iter()
        .any(|c| c.type_ == condition_type::READY);
    if !first {
        return Ok(previous);
    }
    let status = initial_status(&previous, hierarchy.metadata.generation, &now());
    patch_status(ctx, hierarchy, &status).await?;
    Ok(status)
}

/// Devices this hierarchy registered before (from its status): those with a scope (Edge
/// devices, and Leaf devices behind a gateway), and those it found in the hub as its own (a
/// Leaf of the top layer has no scope). A Conflict is someone else's and never counts.
pub(super) fn previously_registered(previous: &EdgeHierarchyStatus) -> BTreeSet<String> {
    previous
        .devices
        .iter()
        .filter(|d| {
            d.state != DeviceState::Conflict
                && (d.device_scope.is_some()
                    || matches!(
                        d.state,
                        DeviceState::Ready | DeviceState::Drifted | DeviceState::Deleting
                    ))
        })
        .map(|d| d.id.clone())
        .collect()
}

/// Unfinished work comes back soon; otherwise at the next renewal or resync, whichever is first.
fn next_requeue(
    unfinished: bool,
    next_renewal: Option<Timestamp>,
    resync: Duration,
    now: Timestamp,
) -> Requeue {
    if unfinished {
        return Requeue::requeue(UNFINISHED_REQUEUE);
    }
    let until_renewal = next_renewal
        .map(|t| Duration::from_secs(t.as_second().saturating_sub(now.as_second()).max(1) as u64));
    Requeue::requeue(until_renewal.map_or(resync, |r| r.min(resync)))
}

fn resync_interval(hierarchy: &EdgeHierarchy) -> Duration {
    parse_duration(&hierarchy.spec.policy.resync_interval)
        .unwrap_or(Duration::from_secs(300))
        .max(Duration::from_secs(10))
}

async fn publish(scope: &Scope<'_>, notes: Vec<Note>) {
    scope.ctx.events.publish_all(scope.hierarchy, notes).await;
}

/// Acts on a failed reconcile as its error's disposition says.
async fn settle(
    hierarchy: &EdgeHierarchy,
    ctx: &Context,
    previous: &EdgeHierarchyStatus,
    error: Error,
) -> Result<Requeue, Error> {
    let generation = hierarchy.metadata.generation;
    match error.disposition(&hierarchy.spec, Timestamp::now()) {
        Disposition::Retry => Err(error),
        Disposition::Stall {
            reason,
            action,
            message,
            recheck,
        } => {
            let status = blocked_status(previous, reason, &message, true, generation, &now());
            // Unless the status says so already: a resync does not repeat the Event.
            if status != *previous {
                let note = Note::warning(reason, action, message);
                ctx.events.publish_all(hierarchy, vec![note]).await;
                patch_status(ctx, hierarchy, &status).await?;
            }
            Ok(recheck.map_or_else(Requeue::await_change, Requeue::requeue))
        }
        Disposition::Unreachable {
            reason,
            message,
            retry,
        } => {
            let status = blocked_status(previous, reason, &message, false, generation, &now());
            let note = Note::warning(reason, "Sync", message);
            ctx.events.publish_all(hierarchy, vec![note]).await;
            patch_status(ctx, hierarchy, &status).await?;
            Ok(Requeue::requeue(retry))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_devices_are_those_with_a_scope_or_found_as_ours() {
        use crate::api::DeviceStatus;
        let device = |id: &str, state, scope: Option<&str>| DeviceStatus {
            id: id.into(),
            state,
            device_scope: scope.map(str::to_string),
            ..DeviceStatus::default()
        };
        let status = EdgeHierarchyStatus {
            devices: vec![
                device("gw", DeviceState::Ready, Some("ms-azure-iot-edge://gw-1")),
                device(
                    "behind",
                    DeviceState::Pending,
                    Some("ms-azure-iot-edge://gw-1"),
                ),
                device("top-leaf", DeviceState::Ready, None),
                device("drifted-leaf", DeviceState::Drifted, None),
                device("new", DeviceState::Pending, None),
                device("failed", DeviceState::Error, None),
                device(
                    "theirs",
                    DeviceState::Conflict,
                    Some("ms-azure-iot-edge://x-1"),
                ),
            ],
            ..EdgeHierarchyStatus::default()
        };
        let ids: Vec<String> = previously_registered(&status).into_iter().collect();
        assert_eq!(ids, ["behind", "drifted-leaf", "gw", "top-leaf"]);
    }

    #[test]
    fn unfinished_work_comes_back_in_ten_seconds() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(
            next_requeue(true, None, Duration::from_secs(300), now),
            Requeue::requeue(UNFINISHED_REQUEUE)
        );
    }

    #[test]
    fn the_next_renewal_comes_before_the_resync_when_sooner() {
        let now = Timestamp::from_second(1_000).unwrap();
        let resync = Duration::from_secs(300);
        let soon = Timestamp::from_second(1_060).unwrap();
        let late = Timestamp::from_second(9_000).unwrap();
        let past = Timestamp::from_second(10).unwrap();
        assert_eq!(
            next_requeue(false, Some(soon), resync, now),
            Requeue::requeue(Duration::from_secs(60))
        );
        assert_eq!(
            next_requeue(false, Some(late), resync, now),
            Requeue::requeue(resync)
        );
        assert_eq!(
            next_requeue(false, None, resync, now),
            Requeue::requeue(resync)
        );
        assert_eq!(
            next_requeue(false, Some(past), resync, now),
            Requeue::requeue(Duration::from_secs(1)),
            "a renewal already due comes back at once"
        );
    }
}
