//! Module deployments and module health (DESIGN.md section 6).
//!
//! Automatic mode: one IoT Hub configuration per (deployment, top/lower rendering), ids derived
//! from content, so a change creates the new configuration before the old one is deleted.
//! PerDevice mode: the merged manifest applied to each device whose `$edgeAgent` desired
//! properties differ from it. Either way, `$edgeAgent` reported properties are read with paged
//! queries and summarised per device.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::Value;

use crate::api::{
    DeploymentMode, DeviceType, EdgeHierarchy, ModulesStatus, ReconcilePolicy, Topology,
};
use crate::deploy::{self, DesiredConfiguration, HierarchyRef, ManifestError, Manifests};
use crate::iothub::{Configuration, ConfigurationContent, HubClient, HubError};

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
pub async fn resolve(
    client: &kube::Client,
    hierarchy: &EdgeHierarchy,
) -> Result<Manifests, DeploymentError> {
    let namespace = hierarchy.namespace().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let mut texts: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut missing = Vec::new();
    for d in &hierarchy.spec.deployments {
        let Some(r) = &d.config_map_ref else { continue };
        match config_maps.get_opt(&r.name).await? {
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
        return Err(DeploymentError::Invalid(missing));
    }
    deploy::resolve_manifests(&hierarchy.spec, |r| {
        texts
            .get(&(r.name.clone(), r.key.clone()))
            .map(String::as_str)
    })
    .map_err(DeploymentError::Invalid)
}

/// The configurations to write, as decided from desired and observed ones. Pure.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigurationPlan {
    pub create: Vec<String>,
    /// Ids whose priority, target condition or labels were edited in the hub: restored in place.
    pub restore: Vec<String>,
    /// Owned configurations no longer desired; deleted after the new ones exist.
    pub delete: Vec<String>,
    /// What differed, per configuration id.
    pub drift: Vec<String>,
}

/// Compares desired configurations with the hierarchy's configurations in the hub.
pub fn plan_configurations(
    desired: &[DesiredConfiguration],
    owned: &BTreeMap<String, Configuration>,
    known: &BTreeSet<String>,
    manage: bool,
) -> ConfigurationPlan {
    let mut plan = ConfigurationPlan::default();
    let suffix = if manage {
        ""
    } else {
        " (reconcile: Observe, not corrected)"
    };
    for want in desired {
        match owned.get(&want.id) {
            None => {
                if known.contains(&want.id) {
                    plan.drift.push(format!(
                        "configuration {} was deleted outside the operator; re-created{suffix}",
                        want.id
                    ));
                }
                plan.create.push(want.id.clone());
            }
            Some(have) => {
                let content_differs = have
                    .content
                    .as_ref()
                    .and_then(|c| serde_json::to_value(c).ok())
                    .map(|c| strip_empty(&c))
                    != Some(strip_empty(&want.content));
                let settings_differ = have.priority != Some(want.priority)
                    || have.target_condition.as_deref() != Some(want.target_condition.as_str());
                if content_differs {
                    plan.drift.push(format!(
                        "configuration {} has other content in the hub; replaced{suffix}",
                        want.id
                    ));
                    plan.delete.push(want.id.clone());
                    plan.create.push(want.id.clone());
                } else if settings_differ {
                    plan.drift.push(format!("configuration {} had its priority or target condition edited in the hub; restored{suffix}", want.id));
                    plan.restore.push(want.id.clone());
                }
            }
        }
    }
    let wanted: BTreeSet<&str> = desired.iter().map(|d| d.id.as_str()).collect();
    plan.delete.extend(
        owned
            .keys()
            .filter(|id| !wanted.contains(id.as_str()))
            .cloned(),
    );
    if !manage {
        return ConfigurationPlan {
            drift: plan.drift,
            ..Default::default()
        };
    }
    plan
}

/// Drops null-valued and empty-object members, so a hub echo with extra empty sections compares
/// equal to what was sent.
fn strip_empty(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_empty(v)))
                .filter(|(_, v)| !matches!(v, Value::Object(m) if m.is_empty()))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn to_configuration(want: &DesiredConfiguration) -> Result<Configuration, DeploymentError> {
    let content: ConfigurationContent =
        serde_json::from_value(want.content.clone()).map_err(|e| {
            DeploymentError::Render(format!(
                "configuration {}: content does not fit the IoT Hub model: {e}",
                want.id
            ))
        })?;
    Ok(Configuration {
        id: Some(want.id.clone()),
        schema_version: Some("1.0".into()),
        labels: Some(want.labels.clone()),
        content: Some(content),
        target_condition: Some(want.target_condition.clone()),
        priority: Some(want.priority),
        ..Configuration::default()
    })
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

/// Brings the hub's deployments to the spec and reads module health.
pub async fn sync_deployments(
    hub: &HubClient,
    hierarchy: &EdgeHierarchy,
    topology: &Topology,
    manifests: &Manifests,
    registered: &BTreeSet<String>,
    known_configurations: &BTreeSet<String>,
) -> Result<DeploymentOutcome, DeploymentError> {
    let spec = &hierarchy.spec;
    let manage = spec.policy.reconcile == ReconcilePolicy::Manage;
    let namespace = hierarchy.namespace().unwrap_or_default();
    let name = hierarchy.name_any();
    let uid = hierarchy.uid().unwrap_or_default();
    let owner = HierarchyRef {
        namespace: &namespace,
        name: &name,
        uid: &uid,
    };
    let mut out = DeploymentOutcome::default();
    let edge_devices: Vec<&crate::api::DeviceSpec> = spec
        .devices
        .iter()
        .filter(|d| {
            d.device_type == DeviceType::Edge
                && registered.contains(&d.id)
                && topology.layer.contains_key(&d.id)
        })
        .collect();

    let mut desired_configs = Vec::new();
    // Configuration calls share a small hub-wide quota (20 a minute per unit), so a hierarchy
    // that has no deployments, and never had configurations, does not list them.
    let had_configurations = !known_configurations.is_empty();
    if spec.deployment_mode == DeploymentMode::Automatic
        && (!spec.deployments.is_empty() || had_configurations)
    {
        desired_configs = deploy::automatic_configurations(&owner, spec, topology, manifests)
            .map_err(|e| DeploymentError::Invalid(vec![e]))?;
        let owned: BTreeMap<String, Configuration> = hub
            .list_configurations(None)
            .await?
            .into_iter()
            .filter(|c| {
                deploy::is_owned_configuration(
                    &serde_json::to_value(&c.labels).unwrap_or(Value::Null),
                    &uid,
                )
            })
            .filter_map(|c| Some((c.id.clone()?, c)))
            .collect();
        let plan = plan_configurations(&desired_configs, &owned, known_configurations, manage);
        out.drift.extend(plan.drift.clone());
        let by_id: BTreeMap<&str, &DesiredConfiguration> =
            desired_configs.iter().map(|c| (c.id.as_str(), c)).collect();
        // A replaced configuration is deleted first (same id); otherwise new ones come first so
        // devices always have a deployment.
        for id in plan.delete.iter().filter(|id| plan.create.contains(id)) {
            hub.delete_configuration(id, None)
                .await
                .or_else(ignore_not_found)?;
        }
        for id in &plan.create {
            hub.create_or_update_configuration(&to_configuration(by_id[id.as_str()])?, None)
                .await?;
            out.created.push(id.clone());
        }
        for id in &plan.restore {
            let etag = owned
                .get(id)
                .and_then(|c| c.etag.clone())
                .unwrap_or_else(|| "*".into());
            hub.create_or_update_configuration(&to_configuration(by_id[id.as_str()])?, Some(&etag))
                .await?;
        }
        for id in plan.delete.iter().filter(|id| !plan.create.contains(id)) {
            hub.delete_configuration(id, None)
                .await
                .or_else(ignore_not_found)?;
            out.deleted.push(id.clone());
        }
        // Readiness from the metrics the hub computed (configurations just created have none yet).
        for want in desired_configs
            .iter()
            .filter(|c| !plan.create.contains(&c.id))
        {
            let metrics = owned
                .get(&want.id)
                .and_then(|c| c.system_metrics.as_ref())
                .and_then(|m| serde_json::to_value(m).ok())
                .unwrap_or(Value::Null);
            let readiness =
                deploy::deployment_status(&want.id, want.devices.len() as u32, &metrics);
            if !readiness.ready {
                out.not_ready.push(readiness.message);
            }
        }
    }
    // Without deployments in the spec the operator does not manage modules, so whether parents
    // can serve images is not its to judge.
    if !spec.deployments.is_empty() {
        for warning in deploy::gateway_warnings(spec, topology, manifests) {
            out.not_ready.push(warning.message);
        }
    }

    // Module twins of the registered Edge devices that run a deployment, in pages.
    let ids: Vec<&str> = edge_devices
        .iter()
        .filter(|d| d.deployment.is_some())
        .map(|d| d.id.as_str())
        .collect();
    let mut agents: BTreeMap<String, Value> = BTreeMap::new();
    for chunk in ids.chunks(100) {
        let list: Vec<String> = chunk
            .iter()
            .map(|id| format!("'{}'", id.replace('\'', "\\'")))
            .collect();
        let query = format!(
            "SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent' AND deviceId IN [{}]",
            list.join(", ")
        );
        for twin in hub.query(&query).await? {
            if let Some(id) = twin.get("deviceId").and_then(Value::as_str) {
                agents.insert(id.to_string(), twin);
            }
        }
    }

    for device in &edge_devices {
        let layer = topology.layer[&device.id];
        let Ok(manifest) = deploy::merged_manifest(device, layer, &spec.edge, manifests) else {
            continue;
        };
        let twin = agents.get(&device.id).cloned().unwrap_or(Value::Null);
        let desired_props = twin
            .pointer("/properties/desired")
            .cloned()
            .unwrap_or(Value::Null);
        let desired_version = desired_props.get("$version").and_then(Value::as_i64);
        let reported = twin
            .pointer("/properties/reported")
            .cloned()
            .unwrap_or(Value::Null);

        if spec.deployment_mode == DeploymentMode::PerDevice && device.deployment.is_some() {
            let want = manifest
                .pointer("/modulesContent/$edgeAgent/properties.desired")
                .cloned()
                .unwrap_or(Value::Null);
            if without_metadata(&desired_props) != strip_empty(&want) {
                if desired_version.is_some_and(|v| v > 1) {
                    out.drift.push(format!("device {:?}: its deployment manifest was replaced outside the operator; {}", device.id, if manage { "re-applied" } else { "not corrected (reconcile: Observe)" }));
                }
                if manage {
                    let content: ConfigurationContent = serde_json::from_value(manifest.clone())
                        .map_err(|e| {
                            DeploymentError::Render(format!(
                                "device {:?}: manifest does not fit the IoT Hub model: {e}",
                                device.id
                            ))
                        })?;
                    hub.apply_configuration_content(&device.id, &content)
                        .await?;
                    out.applied.push(device.id.clone());
                }
            }
        }

        out.modules.insert(
            device.id.clone(),
            deploy::modules_status(&manifest, desired_version, &reported),
        );
        if let Some(base) = &device.deployment {
            let config_id = desired_configs
                .iter()
                .find(|c| !c.layered && c.deployment == *base && c.devices.contains(&device.id))
                .map(|c| c.id.clone());
            let applied = match &config_id {
                Some(id) => {
                    twin.pointer(&format!(
                        "/configurations/{}/status",
                        id.replace('~', "~0").replace('/', "~1")
                    ))
                    .and_then(Value::as_str)
                        == Some("Applied")
                }
                None => {
                    spec.deployment_mode == DeploymentMode::PerDevice
                        && desired_version.is_some()
                        && !out.applied.contains(&device.id)
                }
            };
            out.deployments
                .insert(device.id.clone(), (base.clone(), config_id, applied));
        }
    }
    Ok(out)
}

/// Deletes every configuration this hierarchy owns (the hierarchy is being deleted); returns
/// their ids.
pub async fn delete_owned_configurations(
    hub: &HubClient,
    uid: &str,
) -> Result<Vec<String>, HubError> {
    let mut deleted = Vec::new();
    for configuration in hub.list_configurations(None).await? {
        let labels = serde_json::to_value(&configuration.labels).unwrap_or(Value::Null);
        let Some(id) = configuration
            .id
            .filter(|_| deploy::is_owned_configuration(&labels, uid))
        else {
            continue;
        };
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

/// Desired properties as the user wrote them: without `$metadata` and `$version`.
fn without_metadata(value: &Value) -> Value {
    match value {
        Value::Object(map) => strip_empty(&Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_metadata(v)))
                .collect(),
        )),
        other => other.clone(),
    }
}

/// Configuration ids recorded in the status (so a deleted one is recognised as drift).
pub fn known_configurations(status: &crate::api::EdgeHierarchyStatus) -> BTreeSet<String> {
    status
        .devices
        .iter()
        .filter_map(|d| d.deployment.as_ref()?.configuration_id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::Variant;
    use serde_json::json;

    fn desired(id: &str) -> DesiredConfiguration {
        DesiredConfiguration {
            id: id.into(),
            deployment: "base".into(),
            variant: Variant::Top,
            layered: false,
            priority: 10,
            target_condition: "tags.edgeHierarchy.uid='u'".into(),
            content: json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1"}}}}),
            labels: BTreeMap::new(),
            devices: vec!["top".into()],
        }
    }

    fn in_hub(want: &DesiredConfiguration) -> Configuration {
        let mut c = to_configuration(want).unwrap();
        c.etag = Some("e1".into());
        c
    }

    #[test]
    fn missing_configurations_are_created_and_stale_ones_deleted() {
        let stale = desired("h-base-old");
        let owned = BTreeMap::from([("h-base-old".to_string(), in_hub(&stale))]);
        let plan = plan_configurations(&[desired("h-base-new")], &owned, &BTreeSet::new(), true);
        assert_eq!(plan.create, ["h-base-new"]);
        assert_eq!(plan.delete, ["h-base-old"]);
        assert!(plan.drift.is_empty());
    }

    #[test]
    fn matching_configurations_need_nothing() {
        let want = desired("h-base-1");
        let owned = BTreeMap::from([(want.id.clone(), in_hub(&want))]);
        assert_eq!(
            plan_configurations(&[want], &owned, &BTreeSet::new(), true),
            ConfigurationPlan::default()
        );
    }

    #[test]
    fn deleted_edited_and_replaced_configurations_are_drift() {
        let want = desired("h-base-1");
        let known = BTreeSet::from(["h-base-1".to_string()]);
        let plan = plan_configurations(std::slice::from_ref(&want), &BTreeMap::new(), &known, true);
        assert_eq!(plan.create, ["h-base-1"]);
        assert!(plan.drift[0].contains("deleted outside the operator"));

        let mut edited = in_hub(&want);
        edited.priority = Some(99);
        let plan = plan_configurations(
            std::slice::from_ref(&want),
            &BTreeMap::from([(want.id.clone(), edited)]),
            &known,
            true,
        );
        assert_eq!(plan.restore, ["h-base-1"]);
        assert!(plan.drift[0].contains("priority or target condition"));

        let mut replaced = in_hub(&want);
        replaced.content = Some(serde_json::from_value(json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "9"}}}})).unwrap());
        let plan = plan_configurations(
            std::slice::from_ref(&want),
            &BTreeMap::from([(want.id.clone(), replaced)]),
            &known,
            true,
        );
        assert_eq!(
            (plan.delete.clone(), plan.create.clone()),
            (vec!["h-base-1".to_string()], vec!["h-base-1".to_string()])
        );

        // Observe: reported, nothing planned.
        let plan = plan_configurations(&[want], &BTreeMap::new(), &known, false);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert!(plan.drift[0].contains("Observe"));
    }

    #[test]
    fn metadata_is_ignored_when_comparing_desired_properties() {
        let twin = json!({"schemaVersion": "1.1", "$version": 4, "$metadata": {"x": 1}, "modules": {"a": {"$metadata": {}, "type": "docker"}}});
        assert_eq!(
            without_metadata(&twin),
            json!({"schemaVersion": "1.1", "modules": {"a": {"type": "docker"}}})
        );
    }
}
