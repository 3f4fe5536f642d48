//! The controller: for each `EdgeHierarchy`, observe the hub, validate the spec, plan, apply, and
//! write the status (DESIGN.md section 4). Decisions live in the pure `plan` and `status`
//! modules; this file wires them to the apiserver and the hub.

pub mod bundles;
pub mod certs;
pub mod conditions;
pub mod credentials;
pub mod deployments;
pub mod events;
pub mod hub;
pub mod model;
pub mod plan;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::events::{EventType, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::api::{
    DeletionPolicy, EdgeHierarchy, EdgeHierarchyStatus, ReconcilePolicy, duration::parse_duration,
    validate,
};
use crate::iothub::{HubCallCounters, HubError};
use crate::names::{FINALIZER, MANAGER};
use credentials::{CredentialError, HubClients};
use model::{HierarchyIdentity, desired_devices};
use plan::{PlanInput, plan};
use status::{SyncOutcome, blocked_status, initial_status, reason, synced_status};

/// Most observe-plan-apply rounds in one reconcile. A tree is at most five Edge layers plus a
/// Leaf layer deep, so six creation rounds and one confirming round converge any valid spec.
const MAX_ROUNDS: usize = 8;

/// Errors that end a reconcile early; each is reported in the status and as an Event.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("IoT Hub error: {0}")]
    Hub(#[from] HubError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error(transparent)]
    Certificates(#[from] certs::CertError),
    #[error(transparent)]
    Deployments(#[from] deployments::DeploymentError),
    #[error("could not delete every device from the hub: {0}; retrying")]
    CleanupIncomplete(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub events: events::EventPublisher,
    pub hubs: HubClients,
    /// Key generation and signing run here, off the async runtime, a few at a time.
    pub crypto: crate::pki::CryptoPool,
    /// Reconcile counts and durations for /metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Consecutive failed reconciles per hierarchy, for the retry backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        counters: Arc<HubCallCounters>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            events: events::EventPublisher::new(client.clone(), reporter),
            hubs: HubClients::new(client.clone(), counters),
            crypto: crate::pki::CryptoPool::with_available_parallelism(),
            failures: Default::default(),
            metrics,
            client,
        }
    }

    async fn event(
        &self,
        hierarchy: &EdgeHierarchy,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let note = conditions::truncate(&note, 1000);
        if let Err(e) = self
            .events
            .publish(&hierarchy.object_ref(&()), type_, reason, action, note)
            .await
        {
            warn!(error = %e, "could not publish event");
        }
    }
}

impl Context {
    /// A Normal Event saying what was done to which objects (`<done> <n> <what>: <ids>`), when
    /// anything was.
    async fn announce(
        &self,
        hierarchy: &EdgeHierarchy,
        reason: &str,
        action: &str,
        done: &str,
        what: &str,
        ids: &[String],
    ) {
        if ids.is_empty() {
            return;
        }
        let note = format!("{done} {} {what}: {}", ids.len(), list(ids));
        self.event(hierarchy, EventType::Normal, reason, action, note)
            .await;
    }
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(
    client: Client,
    counters: Arc<HubCallCounters>,
    metrics: Arc<crate::metrics::Metrics>,
) -> anyhow::Result<()> {
    let hierarchies = Api::<EdgeHierarchy>::all(client.clone());
    if let Err(e) = hierarchies.list(&ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list EdgeHierarchy resources ({e}); install the CRD with `edge-hierarchy-operator crd | kubectl apply -f -` and check the operator's RBAC"
        );
    }
    let context = Arc::new(Context::new(client.clone(), counters, metrics.clone()));
    // Reconcile on spec changes (generation), finalizer changes (the finalizer helper waits for
    // its own patch), and annotations (`kubectl annotate` forces a sync). Not on status writes:
    // every sync writes lastSyncTime, and reacting to that would loop and spend the hub's
    // query quota.
    let (reader, writer) = reflector::store();
    let trigger = watcher(hierarchies, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::annotations)
                .combine(predicates::finalizers),
            Default::default(),
        );
    let controller = Controller::for_stream(trigger, reader);
    let store = controller.store();
    // Hub credentials live in Secrets the user owns: a change to one re-reconciles every
    // hierarchy that refers to it, so fixing a bad key takes effect at once. Only metadata is
    // watched; the data is read when needed.
    let secrets = Api::<PartialObjectMeta<Secret>>::all(client.clone());
    let controller = controller
        .watches(secrets, watcher::Config::default(), move |secret| {
            let namespace = secret.namespace();
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|h| h.namespace() == namespace && credentials::refers_to_secret(h, &name))
                .map(|h| ObjectRef::from_obj(h.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(ControllerConfig::default().concurrency(4))
        .shutdown_on_signal()
        .run(reconcile, error_policy, context);
    metrics.set_ready(true);
    controller
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(hierarchy = %object, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
    info!("controller stopped");
    Ok(())
}

async fn reconcile(hierarchy: Arc<EdgeHierarchy>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let namespace = hierarchy.namespace().unwrap_or_default();
    let api: Api<EdgeHierarchy> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = failure_key(&hierarchy);
    let started = std::time::Instant::now();
    let result = finalizer(&api, FINALIZER, hierarchy, |event| async {
        match event {
            FinalizerEvent::Apply(h) => sync(&h, &ctx).await,
            FinalizerEvent::Cleanup(h) => cleanup(&h, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.failures.lock().expect("failure counts").remove(&key);
    }
    ctx.metrics.reconciled(started, result.is_ok());
    result
}

fn failure_key(hierarchy: &EdgeHierarchy) -> String {
    format!(
        "{}/{}",
        hierarchy.namespace().unwrap_or_default(),
        hierarchy.name_any()
    )
}

/// Retries a failed reconcile with exponential backoff per hierarchy: 5 s, 10 s, 20 s ... up to
/// 5 minutes, with up to 20% jitter so hierarchies failing together do not retry together.
fn error_policy(hierarchy: Arc<EdgeHierarchy>, error: &Error, ctx: Arc<Context>) -> Requeue {
    let failures = {
        let mut counts = ctx.failures.lock().expect("failure counts");
        let count = counts.entry(failure_key(&hierarchy)).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = retry_delay(failures, rand::random::<f64>());
    warn!(hierarchy = %hierarchy.name_any(), error = %error, failures, retry_in = ?delay, "reconcile failed; retrying");
    Requeue::requeue(delay)
}

/// The delay before retry number `failures` (1-based); `jitter` in [0, 1).
fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let base = 5.0 * 2f64.powi(failures.saturating_sub(1).min(16) as i32);
    Duration::from_secs_f64(base.min(300.0) * (1.0 + 0.2 * jitter.clamp(0.0, 1.0)))
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn patch_status(
    ctx: &Context,
    hierarchy: &EdgeHierarchy,
    status: &EdgeHierarchyStatus,
) -> Result<(), Error> {
    let api: Api<EdgeHierarchy> = Api::namespaced(
        ctx.client.clone(),
        &hierarchy.namespace().unwrap_or_default(),
    );
    let patch = json!({
        "apiVersion": EdgeHierarchy::api_version(&()),
        "kind": EdgeHierarchy::kind(&()),
        "status": status,
    });
    api.patch_status(
        &hierarchy.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn resync_interval(hierarchy: &EdgeHierarchy) -> Duration {
    parse_duration(&hierarchy.spec.policy.resync_interval)
        .unwrap_or(Duration::from_secs(300))
        .max(Duration::from_secs(10))
}

/// Brings the hub to the spec (or, under Observe, reports how it differs).
async fn sync(hierarchy: &EdgeHierarchy, ctx: &Context) -> Result<Requeue, Error> {
    let generation = hierarchy.metadata.generation;
    let previous = hierarchy.status.clone().unwrap_or_default();
    let first = !previous
        .conditions
        .iter()
        .any(|c| c.type_ == crate::api::condition_type::READY);
    let previous = if first {
        let status = initial_status(&previous, generation, &now());
        patch_status(ctx, hierarchy, &status).await?;
        status
    } else {
        previous
    };

    // Validate before anything touches the hub.
    let topology = match validate(&hierarchy.spec) {
        Ok(t) => t,
        Err(violations) => {
            let message = violations.to_string();
            stall(
                hierarchy,
                ctx,
                &previous,
                reason::INVALID_SPEC,
                "Validate",
                message,
            )
            .await?;
            return Ok(Requeue::await_change());
        }
    };

    // Deployment manifests (inline or from ConfigMaps) are part of the spec: checked before the
    // hub is touched too.
    let manifests = match deployments::resolve(&ctx.client, hierarchy).await {
        Ok(m) => m,
        Err(deployments::DeploymentError::Invalid(errors)) => {
            let message = deployments::DeploymentError::Invalid(errors).to_string();
            stall(
                hierarchy,
                ctx,
                &previous,
                reason::INVALID_SPEC,
                "Validate",
                message,
            )
            .await?;
            return Ok(Requeue::requeue(Duration::from_secs(300)));
        }
        Err(e) => return Err(e.into()),
    };

    let client = match ctx.hubs.client_for(hierarchy).await {
        Ok(c) => c,
        Err(e) => return credentials_blocked(hierarchy, ctx, &previous, e).await,
    };

    // Certificates first: X509 devices are registered with their identity thumbprints.
    let certificates = match certs::ensure_certificates(
        &ctx.client,
        hierarchy,
        &ctx.crypto,
        &topology.layer,
        Timestamp::now(),
    )
    .await
    {
        Ok(c) => c,
        Err(e) if e.needs_person() => {
            let message = e.to_string();
            stall(
                hierarchy,
                ctx,
                &previous,
                reason::INVALID_ROOT_CA,
                "IssueCertificates",
                message,
            )
            .await?;
            return Ok(Requeue::requeue(Duration::from_secs(300)));
        }
        Err(e) => return Err(e.into()),
    };

    let identity = HierarchyIdentity::of(hierarchy);
    let desired = desired_devices(
        &identity,
        &hierarchy.spec,
        &topology,
        &certificates.thumbprints(),
        &certificates.sas_keys(),
    );
    let previously_registered: BTreeSet<String> = previous
        .devices
        .iter()
        .filter(|d| d.device_scope.is_some())
        .map(|d| d.id.clone())
        .collect();
    let policy = &hierarchy.spec.policy;
    let mut drift: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut failures = BTreeMap::new();
    let mut totals = hub::Applied::default();
    let mut last = plan::Plan::default();
    let mut observed = BTreeMap::new();
    for _ in 0..MAX_ROUNDS {
        observed =
            match hub::observe(&client, &identity, desired.iter().map(|d| d.id.as_str())).await {
                Ok(o) => o,
                Err(e) => return hub_blocked(hierarchy, ctx, &previous, e).await,
            };
        last = plan(&PlanInput {
            identity: &identity,
            policy,
            desired: &desired,
            observed: &observed,
            previously_registered: &previously_registered,
        });
        for (id, report) in &last.devices {
            let seen = drift.entry(id.clone()).or_default();
            for d in &report.drift {
                if !seen.contains(d) {
                    seen.push(d.clone());
                }
            }
        }
        if last.is_converged() {
            break;
        }
        let applied = match hub::apply(&client, &last.actions).await {
            Ok(a) => a,
            Err(e) => return hub_blocked(hierarchy, ctx, &previous, e).await,
        };
        failures = applied.failures.clone();
        let stuck = applied.writes() == 0;
        merge_applied(&mut totals, applied);
        if stuck {
            // Every write of this round failed per device: retrying now would fail the same way.
            break;
        }
    }
    drift.retain(|_, d| !d.is_empty());
    publish_sync_events(hierarchy, ctx, &totals, &last, &drift, policy.reconcile).await;

    // Bundles need the registered devices (their keys and scopes), so they come after the hub.
    let owned: BTreeMap<String, model::HubDevice> = observed
        .into_iter()
        .filter(|(_, d)| model::ownership(d, &identity) == model::Ownership::Ours)
        .collect();
    let bundles = match bundles::ensure_bundles(
        &ctx.client,
        &client,
        hierarchy,
        &topology.layer,
        &owned,
        &certificates,
        &totals.created.iter().cloned().collect(),
    )
    .await
    {
        Ok(b) => b,
        Err(bundles::BundleStepError::Hub(e)) => {
            return hub_blocked(hierarchy, ctx, &previous, e).await;
        }
        Err(bundles::BundleStepError::Kube(e)) => return Err(e.into()),
    };
    publish_certificate_events(hierarchy, ctx, &certificates, &bundles).await;

    let registered: BTreeSet<String> = owned.keys().cloned().collect();
    let known = deployments::known_configurations(&previous);
    let deployed = match deployments::sync_deployments(
        &client,
        hierarchy,
        &topology,
        &manifests,
        &registered,
        &known,
    )
    .await
    {
        Ok(d) => d,
        Err(deployments::DeploymentError::Hub(e)) => {
            return hub_blocked(hierarchy, ctx, &previous, e).await;
        }
        Err(e) => return Err(e.into()),
    };
    publish_deployment_events(hierarchy, ctx, &deployed, policy.reconcile).await;

    let order: Vec<String> = desired.iter().map(|d| d.id.clone()).collect();
    let outcome = SyncOutcome {
        policy: policy.reconcile,
        last: &last,
        drift: &drift,
        failures: &failures,
        order: &order,
    };
    let mut status = synced_status(&previous, &outcome, generation, &now());
    status::add_certificates(&mut status, &certificates, &bundles, generation, &now());
    status::add_deployments(&mut status, &deployed, policy.reconcile, generation, &now());
    patch_status(ctx, hierarchy, &status).await?;
    if !last.is_converged() || !failures.is_empty() || !bundles.failures.is_empty() {
        return Ok(Requeue::requeue(Duration::from_secs(10)));
    }
    // Come back at the next renewal if that is sooner than the resync.
    let until_renewal = certificates.next_renewal().map(|t| {
        Duration::from_secs(
            t.as_second()
                .saturating_sub(Timestamp::now().as_second())
                .max(1) as u64,
        )
    });
    let resync = resync_interval(hierarchy);
    Ok(Requeue::requeue(
        until_renewal.map_or(resync, |r| r.min(resync)),
    ))
}

async fn publish_deployment_events(
    hierarchy: &EdgeHierarchy,
    ctx: &Context,
    deployed: &deployments::DeploymentOutcome,
    policy: ReconcilePolicy,
) {
    ctx.announce(
        hierarchy,
        "DeploymentCreated",
        "Deploy",
        "created",
        "configurations",
        &deployed.created,
    )
    .await;
    ctx.announce(
        hierarchy,
        "DeploymentDeleted",
        "Deploy",
        "deleted",
        "configurations",
        &deployed.deleted,
    )
    .await;
    ctx.announce(
        hierarchy,
        "DeploymentApplied",
        "Deploy",
        "applied deployment manifests to",
        "devices",
        &deployed.applied,
    )
    .await;
    let (type_, reason) = drift_event(policy);
    for drift in &deployed.drift {
        ctx.event(hierarchy, type_, reason, "Deploy", drift.clone())
            .await;
    }
}

async fn publish_certificate_events(
    hierarchy: &EdgeHierarchy,
    ctx: &Context,
    certificates: &certs::Certificates,
    bundles: &bundles::Bundles,
) {
    ctx.announce(
        hierarchy,
        "CertificatesIssued",
        "IssueCertificates",
        "issued certificates for",
        "devices",
        &certificates.issued,
    )
    .await;
    for id in &certificates.renewed {
        let revision = certificates.devices.get(id).map_or(0, |d| d.revision);
        let note = format!("device {id:?}: certificates re-issued (revision {revision})");
        ctx.event(
            hierarchy,
            EventType::Normal,
            "CertificateRenewed",
            "RenewCertificates",
            note,
        )
        .await;
    }
    ctx.announce(
        hierarchy,
        "BundlesUpdated",
        "WriteBundles",
        "wrote config bundles of",
        "devices",
        &bundles.updated,
    )
    .await;
    for (id, failure) in &bundles.failures {
        ctx.event(
            hierarchy,
            EventType::Warning,
            "BundleFailed",
            "WriteBundles",
            format!("device {id:?}: {failure}"),
        )
        .await;
    }
}

/// Marks the hierarchy Stalled for a reason a person must fix, with a Warning Event, unless the
/// status says so already (so a resync does not repeat the Event).
async fn stall(
    hierarchy: &EdgeHierarchy,
    ctx: &Context,
    previous: &EdgeHierarchyStatus,
    reason: &str,
    action: &str,
    message: String,
) -> Result<(), Error> {
    let status = blocked_status(
        previous,
        reason,
        &message,
        true,
        hierarchy.metadata.generation,
        &now(),
    );
    if status != *previous {
        ctx.event(hierarchy, EventType::Warning, reason, action, message)
            .await;
        patch_status(ctx, hierarchy, &status).await?;
    }
    Ok(())
}

fn merge_applied(totals: &mut hub::Applied, applied: hub::Applied) {
    totals.created.extend(applied.created);
    totals.fixed.extend(applied.fixed);
    totals.tagged.extend(applied.tagged);
    totals.deleted.extend(applied.deleted);
    totals.failures.extend(applied.failures);
}

/// Drift is news under Manage (it was corrected) and a warning under Observe (it stays).
fn drift_event(policy: ReconcilePolicy) -> (EventType, &'static str) {
    match policy {
        ReconcilePolicy::Manage => (EventType::Normal, "DriftCorrected"),
        ReconcilePolicy::Observe => (EventType::Warning, "DriftDetected"),
    }
}

async fn publish_sync_events(
    hierarchy: &EdgeHierarchy,
    ctx: &Context,
    applied: &hub::Applied,
    last: &plan::Plan,
    drift: &BTreeMap<String, Vec<String>>,
    policy: ReconcilePolicy,
) {
    ctx.announce(
        hierarchy,
        "Created",
        "CreateDevices",
        "created",
        "devices in the hub",
        &applied.created,
    )
    .await;
    for (id, items) in drift {
        let (type_, reason) = drift_event(policy);
        ctx.event(
            hierarchy,
            type_,
            reason,
            "Sync",
            format!("device {id:?}: {}", items.join("; ")),
        )
        .await;
    }
    let linked: Vec<String> = applied
        .fixed
        .iter()
        .chain(&applied.tagged)
        .cloned()
        .collect();
    ctx.announce(
        hierarchy,
        "Updated",
        "UpdateDevices",
        "updated",
        "devices in the hub",
        &linked,
    )
    .await;
    ctx.announce(
        hierarchy,
        "Deleted",
        "DeleteDevices",
        "deleted",
        "devices from the hub",
        &applied.deleted,
    )
    .await;
    for conflict in &last.conflicts {
        ctx.event(
            hierarchy,
            EventType::Warning,
            reason::OWNERSHIP_CONFLICT,
            "Sync",
            conflict.clone(),
        )
        .await;
    }
    for (id, failure) in &applied.failures {
        ctx.event(
            hierarchy,
            EventType::Warning,
            "DeviceWriteFailed",
            "Sync",
            format!("device {id:?}: {failure}"),
        )
        .await;
    }
}

fn list(ids: &[String]) -> String {
    if ids.len() <= 10 {
        ids.join(", ")
    } else {
        format!("{} and {} more", ids[..10].join(", "), ids.len() - 10)
    }
}

async fn credentials_blocked(
    hierarchy: &EdgeHierarchy,
    ctx: &Context,
    previous: &EdgeHierarchyStatus,
    error: CredentialError,
) -> Result<Requeue, Error> {
    stall(
        hierarchy,
        ctx,
        previous,
        reason::BAD_CREDENTIALS,
        "ReadCredentials",
        error.to_string(),
    )
    .await?;
    // A fix to the Secret triggers a reconcile through the Secret watch; this is a fallback.
    Ok(Requeue::requeue(Duration::from_secs(300)))
}

async fn hub_blocked(
    hierarchy: &EdgeHierarchy,
    ctx: &Context,
    previous: &EdgeHierarchyStatus,
    error: HubError,
) -> Result<Requeue, Error> {
    if error.is_unauthorized() {
        let secret = &hierarchy.spec.iot_hub.connection_string_secret_ref;
        return credentials_blocked(
            hierarchy,
            ctx,
            previous,
            CredentialError::Rejected {
                secret: secret.name.clone(),
                key: secret.key.clone(),
                detail: error.to_string(),
            },
        )
        .await;
    }
    let message = format!("the hub could not be reached or failed: {error}");
    let status = blocked_status(
        previous,
        reason::HUB_UNREACHABLE,
        &message,
        false,
        hierarchy.metadata.generation,
        &now(),
    );
    ctx.event(
        hierarchy,
        EventType::Warning,
        reason::HUB_UNREACHABLE,
        "Sync",
        message,
    )
    .await;
    patch_status(ctx, hierarchy, &status).await?;
    Ok(Requeue::requeue(Duration::from_secs(30)))
}

/// Removes the hierarchy's ownerReferences from its Secrets; returns how many were released.
async fn release_secrets(ctx: &Context, hierarchy: &EdgeHierarchy) -> Result<usize, Error> {
    let secrets: Api<Secret> = Api::namespaced(
        ctx.client.clone(),
        &hierarchy.namespace().unwrap_or_default(),
    );
    let selector = format!("{}={}", crate::names::HIERARCHY_LABEL, hierarchy.name_any());
    let list = secrets
        .list(&ListParams::default().labels(&selector))
        .await?;
    let uid = hierarchy.uid();
    let mut released = 0;
    for secret in list.items {
        let owners = secret.metadata.owner_references.clone().unwrap_or_default();
        if !owners.iter().any(|o| Some(&o.uid) == uid.as_ref()) {
            continue;
        }
        let keep: Vec<_> = owners
            .into_iter()
            .filter(|o| Some(&o.uid) != uid.as_ref())
            .collect();
        let patch = json!({"metadata": {"ownerReferences": keep}});
        secrets
            .patch(
                &secret.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        released += 1;
    }
    Ok(released)
}

/// The hierarchy is being deleted: under Delete (and Manage) its devices leave the hub, children
/// first; under Detach or Observe nothing in the hub is touched.
async fn cleanup(hierarchy: &EdgeHierarchy, ctx: &Context) -> Result<Requeue, Error> {
    let policy = &hierarchy.spec.policy;
    if policy.deletion == DeletionPolicy::Detach || policy.reconcile == ReconcilePolicy::Observe {
        // The devices stay, so their certificates and bundles must too: release the Secrets
        // from the hierarchy before garbage collection would take them.
        let released = release_secrets(ctx, hierarchy).await?;
        ctx.event(
            hierarchy,
            EventType::Normal,
            "Detached",
            "Delete",
            format!("hierarchy deleted; its hub devices and {released} Secrets (certificates, bundles, root CA) are left in place"),
        )
        .await;
        return Ok(Requeue::await_change());
    }
    let client = ctx.hubs.client_for(hierarchy).await.map_err(|e| {
        // Without credentials the devices cannot be deleted; say how to let go.
        Error::Credentials(CredentialError::Cleanup {
            detail: e.to_string(),
        })
    })?;
    let identity = HierarchyIdentity::of(hierarchy);
    let none = BTreeSet::new();
    let mut deleted = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let observed = hub::observe(&client, &identity, std::iter::empty()).await?;
        let round = plan(&PlanInput {
            identity: &identity,
            policy,
            desired: &[],
            observed: &observed,
            previously_registered: &none,
        });
        if round.is_converged() {
            break;
        }
        let applied = hub::apply(&client, &round.actions).await?;
        if !applied.failures.is_empty() {
            let failures: Vec<String> = applied
                .failures
                .iter()
                .map(|(id, f)| format!("{id}: {f}"))
                .collect();
            return Err(Error::CleanupIncomplete(failures.join("; ")));
        }
        deleted.extend(applied.deleted);
    }
    ctx.announce(
        hierarchy,
        "Deleted",
        "Delete",
        "deleted",
        "devices from the hub",
        &deleted,
    )
    .await;
    let configurations = deployments::delete_owned_configurations(&client, &identity.uid).await?;
    ctx.announce(
        hierarchy,
        "DeploymentDeleted",
        "Delete",
        "deleted",
        "configurations",
        &configurations,
    )
    .await;
    Ok(Requeue::await_change())
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes_with_bounded_jitter() {
        assert_eq!(retry_delay(1, 0.0), Duration::from_secs(5));
        assert_eq!(retry_delay(2, 0.0), Duration::from_secs(10));
        assert_eq!(retry_delay(4, 0.0), Duration::from_secs(40));
        assert_eq!(retry_delay(10, 0.0), Duration::from_secs(300));
        assert_eq!(retry_delay(u32::MAX, 0.0), Duration::from_secs(300));
        assert!(retry_delay(1, 0.999) < Duration::from_secs(6));
        assert!(retry_delay(1, 0.5) > Duration::from_secs(5));
    }
}
