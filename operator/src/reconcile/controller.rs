//! The controller: what triggers a reconcile, the shared state every reconcile uses, and the
//! retry backoff. The reconcile itself is `sync` (a hierarchy that exists) and `cleanup` (one
//! being deleted), behind the finalizer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
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
    BUNDLE_COMPONENT, CERTS_COMPONENT, COMPONENT_LABEL, FINALIZER, FINGERPRINT_ANNOTATION,
    HIERARCHY_LABEL, INSTALLED_ANNOTATION, MANAGER, RENEW_ANNOTATION,
};

/// Hierarchies reconciled at once unless `--reconcile-concurrency` says otherwise. A reconcile
/// holds its slot while it waits for its hub; a hub that does not answer gives its slot back
/// within one call's time budget (`iothub::ClientOptions::call_budget`), and at once while it
/// is paused after that (docs/tenancy.md).
pub const DEFAULT_CONCURRENCY: u16 = 4;

/// Which hierarchies this operator reconciles, and where it reads.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// `None`: every namespace (cluster-wide watches). `Some`: only these namespaces, each
    /// watched on its own, so no cluster-scoped list or watch is made (`--watch-namespaces`).
    pub namespaces: Option<Vec<String>>,
    /// A label selector on EdgeHierarchy objects (`--shard-selector`): only those that match are
    /// watched and reconciled.
    pub shard_selector: Option<String>,
}

impl Watched {
    /// One API per watched namespace, or one for all of them.
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespaces {
            None => vec![Api::all(client.clone())],
            Some(namespaces) => namespaces
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
        }
    }
}

/// Checks a label selector (`--shard-selector`) as the API server parses it: comma-separated
/// requirements `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)` and
/// `key notin (a,b)`.
pub fn check_label_selector(selector: &str) -> Result<(), String> {
    if selector.trim().is_empty() {
        return Err("the selector is empty; leave it unset to reconcile every hierarchy".into());
    }
    for requirement in split_requirements(selector)? {
        check_requirement(requirement.trim())
            .map_err(|e| format!("requirement {:?}: {e}", requirement.trim()))?;
    }
    Ok(())
}

/// The requirements of a selector: split at the commas outside parentheses.
fn split_requirements(selector: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0u32, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            '(' => return Err("nested parentheses".into()),
            ')' if depth == 1 => depth = 0,
            ')' => return Err("a ')' without its '('".into()),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a '(' without its ')'".into());
    }
    parts.push(&selector[start..]);
    Ok(parts)
}

fn check_requirement(requirement: &str) -> Result<(), String> {
    if requirement.is_empty() {
        return Err("empty (two commas in a row, or one at an end)".into());
    }
    if let Some(key) = requirement.strip_prefix('!') {
        return check_label_key(key.trim());
    }
    if let Some(open) = requirement.find('(') {
        let mut words = requirement[..open].split_whitespace();
        let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err("expected `key in (v1,v2)` or `key notin (v1,v2)`".into());
        };
        if op != "in" && op != "notin" {
            return Err(format!("unknown operator {op:?}; use in or notin"));
        }
        check_label_key(key)?;
        let values = requirement[open + 1..]
            .strip_suffix(')')
            .ok_or("nothing may follow the ')'")?;
        for value in values.split(',') {
            check_label_value(value.trim())?;
        }
        return Ok(());
    }
    let (key, value) = if let Some((k, v)) = requirement.split_once("!=") {
        (k, v)
    } else if let Some((k, v)) = requirement.split_once("==") {
        (k, v)
    } else if let Some((k, v)) = requirement.split_once('=') {
        (k, v)
    } else {
        return check_label_key(requirement);
    };
    check_label_key(key.trim())?;
    check_label_value(value.trim())
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name.
fn check_label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            let valid_prefix = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !part.starts_with('-')
                        && !part.ends_with('-')
                });
            if !valid_prefix {
                return Err(format!(
                    "key {key:?}: the prefix before '/' must be a DNS subdomain (lower-case letters, digits, '-' and '.')"
                ));
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err(format!("key {key:?}: the name is empty"));
    }
    check_label_value(name).map_err(|e| format!("key {key:?}: {e}"))
}

/// A label value (or the name part of a key): up to 63 letters, digits, '-', '_' and '.',
/// starting and ending with a letter or digit; a value may be empty.
fn check_label_value(value: &str) -> Result<(), String> {
    let alnum = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    let valid = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && alnum(value.chars().next())
        && alnum(value.chars().last());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a label value (up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        ))
    }
}

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Hierarchies reconciled at once (at least one).
    pub concurrency: u16,
    pub watched: Watched,
    /// `User-Agent` of the hub calls: names the operator's version and this replica.
    pub user_agent: String,
    /// Where devices reach the EST server, when it runs (`--est-addr`).
    pub est: Option<crate::est::EstEndpoint>,
}

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
    /// Reconciles running at once, over every watched namespace.
    slots: tokio::sync::Semaphore,
    /// Where devices reach the EST server, when it runs (`issuance: Est` bundles need it).
    pub est: Option<crate::est::EstEndpoint>,
}

impl Context {
    pub fn new(
        client: Client,
        counters: Arc<HubCallCounters>,
        metrics: Arc<crate::metrics::Metrics>,
        options: &Options,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            events: EventPublisher::new(client.clone(), reporter),
            hubs: HubClients::new(client.clone(), counters, options.user_agent.clone()),
            crypto: crate::pki::CryptoPool::with_available_parallelism(),
            failures: Default::default(),
            memories: Default::default(),
            secrets: SecretCache::watch(client.clone(), options.watched.namespaces.as_deref()),
            configuration_views: Default::default(),
            proof_keys: super::proof_keys::ProofKeys::new(client.clone()),
            metrics,
            client,
            slots: tokio::sync::Semaphore::new(usize::from(options.concurrency.max(1))),
            est: options.est.clone(),
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

/// Runs the controller until `stop` resolves (then reconciles in flight finish), reconciling
/// up to `options.concurrency` hierarchies at once (at least one).
pub async fn run(
    client: Client,
    counters: Arc<HubCallCounters>,
    metrics: Arc<crate::metrics::Metrics>,
    options: Options,
    stop: futures::future::BoxFuture<'static, ()>,
) -> anyhow::Result<()> {
    let watched = &options.watched;
    let mut list = ListParams::default().limit(1);
    if let Some(selector) = &watched.shard_selector {
        list = list.labels(selector);
    }
    let scopes: Vec<Option<&str>> = match &watched.namespaces {
        None => vec![None],
        Some(namespaces) => namespaces.iter().map(|ns| Some(ns.as_str())).collect(),
    };
    for (hierarchies, namespace) in watched
        .apis::<EdgeHierarchy>(&client)
        .into_iter()
        .zip(scopes)
    {
        if let Err(e) = hierarchies.list(&list).await {
            anyhow::bail!(
                "cannot list EdgeHierarchy resources{} ({e}); install the CRD with `edge-hierarchy-operator crd | kubectl apply -f -` and check the operator's RBAC",
                namespace
                    .map(|ns| format!(" in namespace {ns:?}"))
                    .unwrap_or_default()
            );
        }
    }
    let context = Arc::new(Context::new(
        client.clone(),
        counters,
        metrics.clone(),
        &options,
    ));
    let stop = stop.shared();
    // One controller per watched namespace (or one for all): each has its own watches and
    // store; the Context's slots bound the reconciles of all of them together.
    let controllers = watched
        .apis::<EdgeHierarchy>(&client)
        .into_iter()
        .zip(watched.apis::<PartialObjectMeta<Secret>>(&client))
        .zip(watched.apis::<PartialObjectMeta<ConfigMap>>(&client))
        .map(|((hierarchies, secrets), config_maps)| {
            controller(hierarchies, secrets, config_maps, &options)
                .graceful_shutdown_on(stop.clone())
                .run(reconcile, error_policy, context.clone())
                .boxed()
        });
    let results = futures::stream::select_all(controllers);
    metrics.set_ready(true);
    info!(
        concurrency = options.concurrency,
        namespaces = ?watched.namespaces,
        shard_selector = ?watched.shard_selector,
        "reconciling"
    );
    results
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(hierarchy = %object, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
    metrics.set_ready(false);
    info!("controller stopped");
    Ok(())
}

/// The controller of the hierarchies `hierarchies` reaches, with the watches of the Secrets and
/// ConfigMaps they refer to.
fn controller(
    hierarchies: Api<EdgeHierarchy>,
    secrets: Api<PartialObjectMeta<Secret>>,
    config_maps: Api<PartialObjectMeta<ConfigMap>>,
    options: &Options,
) -> Controller<EdgeHierarchy> {
    let mut selected = watcher::Config::default().any_semantic();
    if let Some(selector) = &options.watched.shard_selector {
        selected = selected.labels(selector);
    }
    // Reconcile on spec changes (generation), finalizer changes (the finalizer helper waits for
    // its own patch), and annotations (`kubectl annotate` forces a sync). Not on status writes:
    // every sync writes lastSyncTime, and reacting to that would loop and spend the hub's
    // query quota.
    let (reader, writer) = reflector::store();
    let trigger = watcher(hierarchies, selected)
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
    controller
        .watches(secrets, watcher::Config::default(), move |secret| {
            let namespace = secret.namespace();
            let name = secret.name_any();
            let woken = own_secret_wakes_hierarchy(&secret);
            store
                .state()
                .into_iter()
                .filter(|h| {
                    h.namespace() == namespace
                        && (credentials::refers_to_secret(h, &name)
                            || woken.as_deref() == Some(h.name_any().as_str()))
                })
                .map(|h| ObjectRef::from_obj(h.as_ref()))
                .collect::<Vec<_>>()
        })
        // Deployment manifests kept in ConfigMaps: applying one after the hierarchy that names
        // it (as `kubectl apply -f` of an import does) recovers the hierarchy at once.
        .watches(config_maps, watcher::Config::default(), move |config_map| {
            let namespace = config_map.namespace();
            let name = config_map.name_any();
            config_map_store
                .state()
                .into_iter()
                .filter(|h| h.namespace() == namespace && refers_to_config_map(h, &name))
                .map(|h| ObjectRef::from_obj(h.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(ControllerConfig::default().concurrency(options.concurrency.max(1)))
}

async fn reconcile(hierarchy: Arc<EdgeHierarchy>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let namespace = hierarchy.namespace().unwrap_or_default();
    let api: Api<EdgeHierarchy> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = failure_key(&hierarchy);
    // Never closed, so acquiring cannot fail.
    let _slot = ctx.slots.acquire().await;
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

/// The hierarchy whose certificate Secret this is, when it carries a renewal request, or whose
/// bundle Secret this is, when the installer acknowledged its current content (a root rotation
/// advances on it).
fn own_secret_wakes_hierarchy(secret: &PartialObjectMeta<Secret>) -> Option<String> {
    let labels = secret.labels();
    let annotations = secret.annotations();
    let component = labels.get(COMPONENT_LABEL).map(String::as_str);
    let renewal = component == Some(CERTS_COMPONENT) && annotations.contains_key(RENEW_ANNOTATION);
    let installed = component == Some(BUNDLE_COMPONENT)
        && annotations
            .get(INSTALLED_ANNOTATION)
            .is_some_and(|ack| annotations.get(FINGERPRINT_ANNOTATION) == Some(ack));
    (renewal || installed)
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
    fn shard_selectors_are_checked_as_the_api_server_parses_them() {
        for good in [
            "shard=a",
            "sharding.fluxcd.io/key=shard1",
            "shard in (a, b),tier!=test",
            "shard==a, !legacy",
            "environment notin (dev,qa)",
            "shard",
            "shard=",
        ] {
            assert_eq!(check_label_selector(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("shard=a,", "empty"),
            ("shard in (a,b", "without its ')'"),
            ("shard within (a)", "unknown operator \"within\""),
            ("shard=a b", "not a label value"),
            ("Example.com/shard=a", "DNS subdomain"),
            ("-shard=a", "not a label value"),
            ("shard in (a) x", "nothing may follow"),
            ("/shard=a", "DNS subdomain"),
        ] {
            let error = check_label_selector(bad).expect_err(bad);
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

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
