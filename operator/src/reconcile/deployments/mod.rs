//! The deployment step (docs/architecture.md, "Deployments and health").
//!
//! Automatic mode: one IoT Hub configuration per (deployment, top/lower rendering), ids derived
//! from content, so a change creates the new configuration before the old one is deleted.
//! PerDevice mode: the merged manifest applied to each device whose `$edgeAgent` desired
//! properties differ from it. Either way, `$edgeAgent` module twins are read with paged queries
//! and summarised per device.
//!
//! Two rounds of observe, plan ([`plan`], pure) and apply: first the configurations
//! ([`reconcile_configurations`], beside the device step), then the devices
//! ([`reconcile_devices`], after the bundles), whose twins are read after the configurations
//! changed so they show the result.

pub mod plan;
pub mod read_back;
pub mod shared_view;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::Api;

use super::error::Error;
use super::scope::Scope;
use crate::api::{
    DeploymentMode, DeviceType, EdgeHierarchy, ModulesStatus, ReconcilePolicy, Topology,
};
use crate::deploy::{self, DesiredConfiguration, ManifestError, Manifests};
use crate::iothub::query::in_list_queries;
use crate::iothub::{Configuration, HubClient, HubError};
use crate::ownership::{HierarchyIdentity, Ownership, judge_configuration};
use plan::{AgentTwin, ConfigurationPlan, DevicePlanInput};
use read_back::AgentReadBacks;

#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ManifestError>),
    #[error("Kubernetes API error while reading deployment ConfigMaps: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("{0}")]
    Render(String),
}

/// Reads ConfigMap-backed manifests and validates every deployment against the schemas.
pub async fn resolve(client: &kube::Client, hierarchy: &EdgeHierarchy) -> Result<Manifests, Error> {
    let namespace = hierarchy.namespace().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let mut texts: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut missing = Vec::new();
    for d in &hierarchy.spec.deployments {
        let Some(r) = &d.config_map_ref else { continue };
        match config_maps
            .get_opt(&r.name)
            .await
            .map_err(DeploymentError::Kube)?
        {
            Some(cm) => match cm.data.as_ref().and_then(|data| data.get(&r.key)) {
                Some(text) => {
                    texts.insert((r.name.clone(), r.key.clone()), text.clone());
                }
                None => missing.push(ManifestError {
                    deployment: d.name.clone(),
                    path: format!("spec.deployments[{}].configMapRef.key", d.name),
                    problem: format!("ConfigMap {:?} has no key {:?}", r.name, r.key),
                    fix: "add the key to the ConfigMap or correct configMapRef.key".into(),
                }),
            },
            None => missing.push(ManifestError {
                deployment: d.name.clone(),
                path: format!("spec.deployments[{}].configMapRef.name", d.name),
                problem: format!(
                    "ConfigMap {:?} does not exist in namespace {namespace:?}",
                    r.name
                ),
                fix: "create the ConfigMap or correct configMapRef.name".into(),
            }),
        }
    }
    if !missing.is_empty() {
        return Err(Error::InvalidManifests(missing));
    }
    deploy::resolve_manifests(&hierarchy.spec, |r| {
        texts
            .get(&(r.name.clone(), r.key.clone()))
            .map(String::as_str)
    })
    .map_err(Error::InvalidManifests)
}

/// Per-device deployment and module state, and what was done.
#[derive(Debug, Default)]
pub struct DeploymentOutcome {
    pub modules: BTreeMap<String, ModulesStatus>,
    /// Base configuration id per device (Automatic) and whether the device reports it applied.
    pub deployments: BTreeMap<String, (String, Option<String>, bool)>,
    pub drift: Vec<String>,
    pub created: Vec<String>,
    pub deleted: Vec<String>,
    pub applied: Vec<String>,
    /// Messages for DeploymentsReady=False (gateway warnings, metrics not yet applied).
    pub not_ready: Vec<String>,
}

/// What the configuration half of the step did, for the device half.
#[derive(Debug, Default)]
pub struct ConfigurationsApplied {
    /// The configurations the spec wants (Automatic mode), with the devices each targets.
    desired: Vec<DesiredConfiguration>,
    out: DeploymentOutcome,
}

/// The configuration half (Automatic mode): brings the hub's configurations to the spec. It
/// needs no registered device (configurations target devices by tag), so it runs beside the
/// device step; the configuration quota (20 a minute per unit) is then spent while the
/// registry's is, not after it.
///
/// `view_age`: how old a shared view of the hub's configurations may be (see [`shared_view`]).
pub async fn reconcile_configurations(
    scope: &Scope<'_>,
    topology: &Topology,
    manifests: &Manifests,
    known_configurations: &BTreeSet<String>,
    view_age: Duration,
) -> Result<ConfigurationsApplied, Error> {
    let spec = &scope.hierarchy.spec;
    let manage = spec.policy.reconcile == ReconcilePolicy::Manage;
    let mut applied = ConfigurationsApplied::default();
    // Configuration calls share a small hub-wide quota (20 a minute per unit), so a hierarchy
    // that has no deployments, and never had configurations, does not list them.
    if spec.deployment_mode == DeploymentMode::Automatic
        && (!spec.deployments.is_empty() || !known_configurations.is_empty())
    {
        let desired = deploy::automatic_configurations(&scope.identity, spec, topology, manifests)
            .map_err(|e| DeploymentError::Invalid(vec![e]))?;
        let views = &scope.ctx.configuration_views;
        let all = views.list(&scope.hub, view_age).await?;
        let in_hub = all.len();
        let owned = owned_by(all, &scope.identity, known_configurations);
        let plan = plan::plan_configurations(&desired, &owned, known_configurations, manage);
        // Checked before anything is written: past the hub's limit every create would fail.
        plan::check_configuration_limit(in_hub, &plan, &desired)
            .map_err(Error::InvalidManifests)?;
        let out = &mut applied.out;
        out.drift.extend(plan.drift.clone());
        let mut written = Vec::new();
        let applied_plan =
            apply_configurations(&scope.hub, &plan, &desired, out, &mut written).await;
        if applied_plan.is_err() {
            views.forget(&scope.hub).await;
        } else {
            let deleted: Vec<String> = plan
                .delete
                .iter()
                .filter(|id| !plan.create.contains(id))
                .cloned()
                .collect();
            views.record(&scope.hub, &written, &deleted).await;
        }
        applied_plan?;
        out.not_ready
            .extend(plan::readiness(&desired, &owned, &plan));
        applied.desired = desired;
    }
    Ok(applied)
}

/// The device half: applies PerDevice manifests, and reads every Edge device's `$edgeAgent`
/// twin for deployment state and module health, after the configurations changed.
pub async fn reconcile_devices(
    scope: &Scope<'_>,
    topology: &Topology,
    manifests: &Manifests,
    registered: &BTreeSet<String>,
    configurations: ConfigurationsApplied,
    read_backs: &mut AgentReadBacks,
) -> Result<DeploymentOutcome, Error> {
    let spec = &scope.hierarchy.spec;
    let manage = spec.policy.reconcile == ReconcilePolicy::Manage;
    let ConfigurationsApplied { desired, mut out } = configurations;
    // Without deployments in the spec the operator does not manage modules, so whether parents
    // can serve images is not its to judge.
    if !spec.deployments.is_empty() {
        let est_port = scope
            .ctx
            .est
            .as_ref()
            .and_then(crate::est::EstEndpoint::port);
        for warning in deploy::gateway_warnings(spec, topology, manifests, est_port) {
            out.not_ready.push(warning.message);
        }
    }

    let devices: Vec<&crate::api::DeviceSpec> = spec
        .devices
        .iter()
        .filter(|d| {
            d.device_type == DeviceType::Edge
                && registered.contains(&d.id)
                && topology.layer.contains_key(&d.id)
        })
        .collect();
    let with_deployment = devices
        .iter()
        .filter(|d| d.deployment.is_some())
        .map(|d| d.id.as_str());
    let mut agents = agent_twins(&scope.hub, spec.deployment_mode, with_deployment).await?;
    let now = Instant::now();
    read_backs.expire(now);
    read_backs.overlay(&mut agents, now);
    let plan = plan::plan_devices(&DevicePlanInput {
        spec,
        topology,
        manifests,
        devices: &devices,
        agents: &agents,
        configurations: &desired,
        manage,
    })?;
    for (id, content) in &plan.apply {
        scope.hub.apply_configuration_content(id, content).await?;
        out.applied.push(id.clone());
        // Read back, so the next reconcile does not take a lagging query for a missing apply.
        let twin = scope.hub.get_module_twin(id, "$edgeAgent").await?;
        if let Some(agent) = AgentTwin::from_twin(&twin) {
            read_backs.remember(agent, Instant::now());
        }
    }
    out.modules = plan.modules;
    out.deployments = plan.deployments;
    out.drift.extend(plan.drift);
    Ok(out)
}

/// The hub's configurations that this hierarchy owns, by id.
async fn owned_configurations(
    hub: &HubClient,
    identity: &HierarchyIdentity,
    known: &BTreeSet<String>,
) -> Result<BTreeMap<String, Configuration>, HubError> {
    Ok(owned_by(
        hub.list_configurations(None).await?,
        identity,
        known,
    ))
}

/// The configurations this hierarchy may change and delete: labelled for it with the operator's
/// proof; labelled for it without one when the status records them (written before proofs:
/// the restore adds it); and those of an earlier hierarchy of the same name (Detach, then
/// created again), which nothing else will ever clean up. Labels alone can be forged.
fn owned_by(
    all: Vec<Configuration>,
    identity: &HierarchyIdentity,
    known: &BTreeSet<String>,
) -> BTreeMap<String, Configuration> {
    all.into_iter()
        .filter_map(|c| Some((c.id.clone()?, c)))
        .filter(
            |(id, c)| match judge_configuration(c.labels.as_ref(), id, identity) {
                Ownership::Ours | Ownership::Earlier { .. } => true,
                Ownership::Unproven if known.contains(id) => true,
                Ownership::Unproven => {
                    tracing::warn!(
                        configuration = %id,
                        hierarchy = %identity,
                        "labelled for this hierarchy without the operator's proof; left alone"
                    );
                    false
                }
                Ownership::Unowned | Ownership::Other { .. } => false,
            },
        )
        .collect()
}

/// Carries out a configuration plan. A replaced configuration is deleted first (same id);
/// otherwise new ones come first so devices always have a deployment.
/// The hub's answers to the creates and updates go to `written`.
async fn apply_configurations(
    hub: &HubClient,
    plan: &ConfigurationPlan,
    desired: &[DesiredConfiguration],
    out: &mut DeploymentOutcome,
    written: &mut Vec<Configuration>,
) -> Result<(), Error> {
    let by_id: BTreeMap<&str, &DesiredConfiguration> =
        desired.iter().map(|c| (c.id.as_str(), c)).collect();
    for id in plan.delete.iter().filter(|id| plan.create.contains(id)) {
        hub.delete_configuration(id, None)
            .await
            .or_else(ignore_not_found)?;
    }
    for id in &plan.create {
        let answer = hub
            .create_or_update_configuration(&plan::to_configuration(by_id[id.as_str()])?, None)
            .await?;
        written.push(answer);
        out.created.push(id.clone());
    }
    // Restored by read-modify-write: the hub's own copy with only what may change set back, as
    // `az iot edge deployment update` does, so nothing else the hub keeps is overwritten.
    for id in &plan.restore {
        let want = by_id[id.as_str()];
        let mut have = hub.get_configuration(id).await?;
        have.priority = Some(want.priority);
        have.target_condition = Some(want.target_condition.clone());
        // Ours set back (the proof among them); labels someone else added stay.
        have.labels
            .get_or_insert_with(Default::default)
            .extend(want.labels.clone());
        let etag = have.etag.clone().unwrap_or_else(|| "*".into());
        written.push(
            hub.create_or_update_configuration(&have, Some(&etag))
                .await?,
        );
    }
    for id in plan.delete.iter().filter(|id| !plan.create.contains(id)) {
        hub.delete_configuration(id, None)
            .await
            .or_else(ignore_not_found)?;
        out.deleted.push(id.clone());
    }
    Ok(())
}

/// `$edgeAgent` module twins of these devices, by device id, in as few queries as the hub's
/// limits allow, selecting only what the plan reads (see [`plan::agent_query_fields`]).
async fn agent_twins<'a>(
    hub: &HubClient,
    mode: DeploymentMode,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, AgentTwin>, Error> {
    let mut agents = BTreeMap::new();
    let head = format!(
        "SELECT {} FROM devices.modules WHERE moduleId = '$edgeAgent' AND deviceId IN ",
        plan::agent_query_fields(mode)
    );
    for query in in_list_queries(&head, ids, "") {
        // A row that is not an agent twin is not this step's to judge.
        for twin in hub
            .query(&query)
            .await?
            .iter()
            .filter_map(AgentTwin::from_row)
        {
            agents.insert(twin.device_id.clone(), twin);
        }
    }
    Ok(agents)
}

/// Deletes every configuration this hierarchy owns (the hierarchy is being deleted); returns
/// their ids.
pub async fn delete_owned_configurations(
    hub: &HubClient,
    identity: &HierarchyIdentity,
    known: &BTreeSet<String>,
) -> Result<Vec<String>, HubError> {
    let mut deleted = Vec::new();
    for id in owned_configurations(hub, identity, known)
        .await?
        .into_keys()
    {
        hub.delete_configuration(&id, None)
            .await
            .or_else(ignore_not_found)?;
        deleted.push(id);
    }
    Ok(deleted)
}

fn ignore_not_found(e: HubError) -> Result<(), HubError> {
    if e.is_not_found() { Ok(()) } else { Err(e) }
}
