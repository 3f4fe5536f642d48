//! The controller: what triggers a reconcile, the shared state every reconcile uses, and the
//! retry backoff. The reconcile itself is `sync` (a hierarchy that exists) and `cleanup` (one
//! being deleted), behind the finalizer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use super::credentials::{self, HubClients};
use super::deployments::shared_view::ConfigurationViews;
use super::error::Error;
use super::events::EventPublisher;
use super::memory::Memories;
use super::secret_cache::SecretCache;
use super::{cleanup, sync};
use crate::api::EdgeHierarchy;
use crate::iothub::HubCallCounters;
use crate::names::{
    CERTS_COMPONENT, COMPONENT_LABEL, FINALIZER, HIERARCHY_LABEL, MANAGER, RENEW_ANNOTATION,
};

/// Hierarchies reconciled at once unless `--reconcile-concurrency` says otherwise. A reconcile
/// holds its slot while it waits for its hub; a hub that does not answer gives its slot back
/// within one call's time budget (`iothub::ClientOptions::call_budget`), and at once while it
/// is paused after that (docs/tenancy.md).
pub const DEFAULT_CONCURRENCY: u16 = 4;

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub events: EventPublisher,
    pub hubs: HubClients,
    /// Key generation and signing run here, off the async runtime, a few at a time.
    pub crypto: crate::pki::CryptoPool,
    /// Reconcile counts and durations for /metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Consecutive failed reconciles per hierarchy, for the retry backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// What each hierarchy's reconciles read back after their writes (see `memory`).
    pub memories: Memories,
    /// The operator's own Secrets, watched (see `secret_cache`).
    pub secrets: SecretCache,
    /// Each hub's configurations, listed once for all its hierarchies (see `shared_view`).
    pub configuration_views: ConfigurationViews,
    /// Each namespace's ownership proof key (see `proof_keys`).
    pub proof_keys: super::proof_keys::ProofKeys,
    /// Where devices reach the EST server, when it runs (`issuance: Est` bundles need it).
    pub est: Option<crate::est::EstEndpoint>,
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
            events: EventPublisher::new(client.clone(), reporter),
            hubs: HubClients::new(client.clone(), counters),
            crypto: crate::pki::CryptoPool::with_available_parallelism(),
            failures: Default::default(),
            memories: Default::default(),
            secrets: SecretCache::watch(client.clone()),
            configuration_views: Default::default(),
            proof_keys: super::proof_keys::ProofKeys::new(client.clone()),
            metrics,
            client,
            est: None,
        }
    }
}

/// The backoff of the watches after an error. kube-runtime's default grows to 30 s and is reset
/// only after two minutes without an error, so the few errors an API server restart causes
/// (connections refused, then each watch's 410 Expired once) kept the operator from seeing new
/// hierarchies for up to two minutes (the chaos suite's apiserver-restart case). Retrying a
/// watch is cheap: at most every 5 s, reset after 10 s without an error.
fn watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(ExponentialBackoff::from(builder), Duration::from_secs(10))
}

/// Runs the controller until SIGTERM or Ctrl-C, reconciling up to `concurrency` hierarchies at
/// once (at least one).
pub async fn run(
    client: Client,
    counters: Arc<HubCallCounters>,
    metrics: Arc<crate::metrics::Metrics>,
    concurrency: u16,
    est: Option<crate::est::EstEndpoint>,
) -> anyhow::Result<()> {
    let hierarchies = Api::<EdgeHierarchy>::all(client.clone());
    if let Err(e) = hierarchies.list(&ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list EdgeHierarchy resources ({e}); install the CRD with `edge-hierarchy-operator crd | kubectl apply -f -` and check the operator's RBAC"
        );
    }
    let context = Arc::new(Context {
        est,
        ..Context::new(client.clone(), counters, metrics.clone())
    });
    // Reconcile on spec changes (generation), finalizer changes (the finalizer helper waits for
    // its own patch), and annotations (`kubectl annotate` forces a sync). Not on status writes:
    // every sync writes lastSyncTime, and reacting to that would loop and spend the hub's
    // query quota.
    let (reader, writer) = reflector::store();
    let trigger = watcher(hierarchies, watcher::Config::default().any_semantic())
        .backoff(watch_backoff())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::annotations)
                .combine(predicates::finalizers),
            Default::default(),
        );
    let controller = Controller::for_stream(trigger, reader).trigger_backoff(watch_backoff());
    let store = controller.store();
    let config_map_store = store.clone();
    // Hub credentials, the root CA and registry logins live in Secrets the user owns: a change
    // to one re-reconciles every hierarchy that refers to it, so fixing a bad key or rotating a
    // registry password takes effect at once. A certificate Secret carrying a renewal request
    // re-reconciles its own hierarchy. Only metadata is watched; the data is read when needed.
    let secrets = Api::<PartialObjectMeta<Secret>>::all(client.clone());
    let controller = controller
        .watches(secrets, watcher::Config::default(), move |secret| {
            let namespace = secret.namespace();
            let name = secret.name_any();
            let renewal_of = renewal_request_hierarchy(&secret);
            store
                .state()
                .into_iter()
                .filter(|h| {
                    h.namespace() == namespace
                        && (credentials::refers_to_secret(h, &name)
                            || renewal_of.as_deref() == Some(h.name_any().as_str()))
                })
                .map(|h| ObjectRef::from_obj(h.as_ref()))
                .collect::<Vec<_>>()
        })
        // Deployment manifests kept in ConfigMaps: applying one after the hierarchy that names
        // it (as `kubectl apply -f` of an import does) recovers the hierarchy at once.
        .watches(
            Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
            watcher::Config::default(),
            move |config_map| {
                let namespace = config_map.namespace();
                let name = config_map.name_any();
                config_map_store
                    .state()
                    .into_iter()
                    .filter(|h| h.namespace() == namespace && refers_to_config_map(h, &name))
                    .map(|h| ObjectRef::from_obj(h.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(ControllerConfig::default().concurrency(concurrency.max(1)))
        .shutdown_on_signal()
        .run(reconcile, error_policy, context);
    metrics.set_ready(true);
    info!(concurrency, "reconciling");
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
            FinalizerEvent::Apply(h) => sync::sync(&h, &ctx).await,
            FinalizerEvent::Cleanup(h) => {
                let done = cleanup::cleanup(&h, &ctx).await;
                if done.is_ok() {
                    ctx.metrics
                        .forget_hierarchy(&h.namespace().unwrap_or_default(), &h.name_any());
                }
                done
            }
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

/// Whether one of the hierarchy's deployments reads its manifest from ConfigMap `name`.
fn refers_to_config_map(hierarchy: &EdgeHierarchy, name: &str) -> bool {
    hierarchy
        .spec
        .deployments
        .iter()
        .filter_map(|d| d.config_map_ref.as_ref())
        .any(|r| r.name == name)
}

/// The hierarchy whose certificate Secret this is, when it carries a renewal request.
fn renewal_request_hierarchy(secret: &PartialObjectMeta<Secret>) -> Option<String> {
    let labels = secret.labels();
    let certs = labels.get(COMPONENT_LABEL).map(String::as_str) == Some(CERTS_COMPONENT);
    (certs && secret.annotations().contains_key(RENEW_ANNOTATION))
        .then(|| labels.get(HIERARCHY_LABEL).cloned())
        .flatten()
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

#[cfg(test)]
mod tests {
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
