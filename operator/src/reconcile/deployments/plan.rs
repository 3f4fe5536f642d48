//! The deployment plan, pure: which IoT Hub configurations to create, restore and delete
//! (Automatic mode), which devices get their manifest applied (PerDevice mode), and each
//! device's module health and deployment state from its `$edgeAgent` twin.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use super::DeploymentError;
use crate::api::{DeploymentMode, DeviceSpec, EdgeHierarchySpec, ModulesStatus, Topology};
use crate::deploy::{self, DesiredConfiguration, ManifestError, Manifests};
use crate::iothub::{Configuration, ConfigurationContent};

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
                    || have.target_condition.as_deref() != Some(want.target_condition.as_str())
                    || !has_labels(have, &want.labels);
                if content_differs {
                    plan.drift.push(format!(
                        "configuration {} has other content in the hub; replaced{suffix}",
                        want.id
                    ));
                    plan.delete.push(want.id.clone());
                    plan.create.push(want.id.clone());
                } else if settings_differ {
                    plan.drift.push(format!("configuration {} had its priority, target condition or labels edited in the hub; restored{suffix}", want.id));
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

/// Whether the configuration carries every one of `labels` (labels others added are theirs).
fn has_labels(have: &Configuration, labels: &BTreeMap<String, String>) -> bool {
    let held = have.labels.as_ref();
    labels
        .iter()
        .all(|(k, v)| held.and_then(|h| h.get(k)) == Some(v))
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

/// Most configurations one hub holds, layered ones included ("IoT Hub quotas and throttling").
pub const MAX_CONFIGURATIONS_PER_HUB: usize = 100;

/// Whether carrying out `plan` keeps the hub within [`MAX_CONFIGURATIONS_PER_HUB`] at every
/// moment: new configurations are created before the ones they replace are deleted, so for a
/// while both exist. `in_hub` counts every configuration of the hub, any owner's.
pub fn check_configuration_limit(
    in_hub: usize,
    plan: &ConfigurationPlan,
    desired: &[DesiredConfiguration],
) -> Result<(), Vec<ManifestError>> {
    // A configuration replaced under the same id is deleted first, so it does not add one.
    let added = plan
        .create
        .iter()
        .filter(|id| !plan.delete.contains(id))
        .count();
    let peak = in_hub + added;
    if added == 0 || peak <= MAX_CONFIGURATIONS_PER_HUB {
        return Ok(());
    }
    let mut deployments: Vec<&str> = desired
        .iter()
        .filter(|c| plan.create.contains(&c.id))
        .map(|c| c.deployment.as_str())
        .collect();
    deployments.dedup();
    Err(deployments
        .into_iter()
        .map(|deployment| ManifestError {
            deployment: deployment.to_string(),
            path: format!("spec.deployments[{deployment}]"),
            problem: format!(
                "the hub holds {in_hub} configurations and this change needs {added} more at once \
                 ({peak}), past IoT Hub's limit of {MAX_CONFIGURATIONS_PER_HUB} per hub (layered \
                 included; a changed deployment briefly needs its old and new configuration)"
            ),
            fix: "remove unused deployments or configurations from the hub, or spread the \
                  hierarchies over more hubs"
                .into(),
        })
        .collect())
}

/// Messages for the desired configurations whose system metrics say they are not applied yet
/// (configurations just created have no metrics, and are not judged).
pub fn readiness(
    desired: &[DesiredConfiguration],
    owned: &BTreeMap<String, Configuration>,
    plan: &ConfigurationPlan,
) -> Vec<String> {
    desired
        .iter()
        .filter(|c| !plan.create.contains(&c.id))
        .filter_map(|want| {
            let metrics = owned
                .get(&want.id)
                .and_then(|c| c.system_metrics.as_ref())
                .and_then(|m| serde_json::to_value(m).ok())
                .unwrap_or(Value::Null);
            let readiness =
                deploy::deployment_status(&want.id, want.devices.len() as u32, &metrics);
            (!readiness.ready).then_some(readiness.message)
        })
        .collect()
}

/// The configuration IoT Hub should hold for a desired one.
pub fn to_configuration(want: &DesiredConfiguration) -> Result<Configuration, DeploymentError> {
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

/// What the operator reads of a device's `$edgeAgent` module twin: desired properties (all of
/// them in PerDevice mode, only `$version` otherwise), the reported properties health needs,
/// and the state of each configuration applied to the device.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentTwin {
    pub device_id: String,
    #[serde(default)]
    pub properties: AgentProperties,
    #[serde(default)]
    pub configurations: BTreeMap<String, AppliedConfiguration>,
}

/// The `$edgeAgent` reported properties module health reads (deploy::modules_status).
const AGENT_REPORTED: [&str; 4] = [
    "lastDesiredVersion",
    "lastDesiredStatus",
    "systemModules",
    "modules",
];

/// What the agent-twin query selects. A full `$edgeAgent` twin carries `$metadata` for every
/// desired and reported leaf, tens of KB a device, and queries are billed by answer size; so
/// only what health needs is selected, and the whole desired properties only in PerDevice mode,
/// where they are compared with the manifest.
pub fn agent_query_fields(mode: DeploymentMode) -> String {
    let mut fields = vec![
        "deviceId".to_string(),
        // On its own: a projected object need not carry its `$` members.
        "properties.desired.$version AS desiredVersion".to_string(),
    ];
    if mode == DeploymentMode::PerDevice {
        fields.push("properties.desired AS desired".into());
    }
    fields.extend(
        AGENT_REPORTED
            .iter()
            .map(|name| format!("properties.reported.{name} AS {name}")),
    );
    fields.push("configurations".into());
    fields.join(", ")
}

impl AgentTwin {
    /// The agent twin as a GET of the `$edgeAgent` module twin returns it. The swagger's twin
    /// has no `configurations`, so neither has this: only PerDevice mode, which has no
    /// configurations, reads agent twins back.
    pub fn from_twin(twin: &crate::iothub::Twin) -> Option<Self> {
        serde_json::from_value(serde_json::to_value(twin).ok()?).ok()
    }

    /// An agent twin from a row of the [`agent_query_fields`] query; `None` for a row that is
    /// not one (no device id). Fields the hub left out or sent as null are absent.
    pub fn from_row(row: &Value) -> Option<Self> {
        let present = |name: &str| row.get(name).filter(|v| !v.is_null());
        let device_id = present("deviceId")?.as_str()?.to_string();
        let mut desired = present("desired").cloned().unwrap_or(Value::Null);
        if let Some(version) = present("desiredVersion") {
            if !desired.is_object() {
                desired = Value::Object(Default::default());
            }
            desired["$version"] = version.clone();
        }
        let reported: serde_json::Map<String, Value> = AGENT_REPORTED
            .iter()
            .filter_map(|name| Some((name.to_string(), present(name)?.clone())))
            .collect();
        let configurations = present("configurations")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        Some(Self {
            device_id,
            properties: AgentProperties {
                desired,
                reported: if reported.is_empty() {
                    Value::Null
                } else {
                    Value::Object(reported)
                },
            },
            configurations,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AgentProperties {
    #[serde(default)]
    pub desired: Value,
    #[serde(default)]
    pub reported: Value,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AppliedConfiguration {
    #[serde(default)]
    pub status: Option<String>,
}

/// Everything the per-device plan looks at.
pub struct DevicePlanInput<'a> {
    pub spec: &'a EdgeHierarchySpec,
    pub topology: &'a Topology,
    pub manifests: &'a Manifests,
    /// The registered Edge devices of the spec.
    pub devices: &'a [&'a DeviceSpec],
    pub agents: &'a BTreeMap<String, AgentTwin>,
    /// The configurations of Automatic mode (empty in PerDevice mode).
    pub configurations: &'a [DesiredConfiguration],
    pub manage: bool,
}

/// Per device: what to apply (PerDevice mode) and what it reports.
#[derive(Debug, Default)]
pub struct DevicePlan {
    /// Manifests to apply with `applyConfigurationContent`, by device.
    pub apply: Vec<(String, ConfigurationContent)>,
    pub modules: BTreeMap<String, ModulesStatus>,
    /// Base deployment, its configuration id (Automatic) and whether the device reports it
    /// applied.
    pub deployments: BTreeMap<String, (String, Option<String>, bool)>,
    pub drift: Vec<String>,
}

/// Plans each device's manifest and reads its health.
pub fn plan_devices(input: &DevicePlanInput<'_>) -> Result<DevicePlan, DeploymentError> {
    let mut plan = DevicePlan::default();
    let per_device = input.spec.deployment_mode == DeploymentMode::PerDevice;
    for device in input.devices {
        let layer = input.topology.layer[&device.id];
        let Ok(manifest) =
            deploy::merged_manifest(device, layer, &input.spec.edge, input.manifests)
        else {
            continue;
        };
        let twin = input.agents.get(&device.id).cloned().unwrap_or_default();
        let desired_version = twin
            .properties
            .desired
            .get("$version")
            .and_then(Value::as_i64);
        let mut applied_now = false;
        if per_device && device.deployment.is_some() {
            let want = manifest
                .pointer("/modulesContent/$edgeAgent/properties.desired")
                .cloned()
                .unwrap_or(Value::Null);
            if without_metadata(&twin.properties.desired) != strip_empty(&want) {
                if desired_version.is_some_and(|v| v > 1) {
                    plan.drift.push(format!(
                        "device {:?}: its deployment manifest was replaced outside the operator; {}",
                        device.id,
                        if input.manage { "re-applied" } else { "not corrected (reconcile: Observe)" }
                    ));
                }
                if input.manage {
                    let content: ConfigurationContent = serde_json::from_value(manifest.clone())
                        .map_err(|e| {
                            DeploymentError::Render(format!(
                                "device {:?}: manifest does not fit the IoT Hub model: {e}",
                                device.id
                            ))
                        })?;
                    plan.apply.push((device.id.clone(), content));
                    applied_now = true;
                }
            }
        }
        plan.modules.insert(
            device.id.clone(),
            deploy::modules_status(&manifest, desired_version, &twin.properties.reported),
        );
        if let Some(base) = &device.deployment {
            let config_id = input
                .configurations
                .iter()
                .find(|c| !c.layered && c.deployment == *base && c.devices.contains(&device.id))
                .map(|c| c.id.clone());
            let applied = match &config_id {
                Some(id) => {
                    twin.configurations
                        .get(id)
                        .and_then(|c| c.status.as_deref())
                        == Some("Applied")
                }
                None => per_device && desired_version.is_some() && !applied_now,
            };
            plan.deployments
                .insert(device.id.clone(), (base.clone(), config_id, applied));
        }
    }
    Ok(plan)
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
    status.configurations.iter().map(|c| c.id.clone()).collect()
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
        assert!(plan.drift[0].contains("priority, target condition or labels"));

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
    fn a_configuration_without_its_proof_label_gets_it_in_place() {
        // Written before proofs: the same content and settings, labels without the proof.
        let mut want = desired("h-base-1");
        want.labels = BTreeMap::from([
            ("edgeHierarchyUid".to_string(), "u".to_string()),
            ("edgeHierarchyProof".to_string(), "0123abcd".to_string()),
        ]);
        let mut legacy = in_hub(&want);
        legacy.labels.as_mut().unwrap().remove("edgeHierarchyProof");
        let owned = BTreeMap::from([(want.id.clone(), legacy)]);
        let plan = plan_configurations(&[want], &owned, &BTreeSet::new(), true);
        assert_eq!(plan.restore, ["h-base-1"]);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
    }

    #[test]
    fn labels_someone_else_added_are_no_drift() {
        let mut want = desired("h-base-1");
        want.labels = BTreeMap::from([("edgeHierarchyUid".to_string(), "u".to_string())]);
        let mut have = in_hub(&want);
        have.labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "line-3".into());
        let owned = BTreeMap::from([(want.id.clone(), have)]);
        assert_eq!(
            plan_configurations(&[want], &owned, &BTreeSet::new(), true),
            ConfigurationPlan::default()
        );
    }

    #[test]
    fn metadata_is_ignored_when_comparing_desired_properties() {
        let twin = json!({"schemaVersion": "1.1", "$version": 4, "$metadata": {"x": 1}, "modules": {"a": {"$metadata": {}, "type": "docker"}}});
        assert_eq!(
            without_metadata(&twin),
            json!({"schemaVersion": "1.1", "modules": {"a": {"type": "docker"}}})
        );
    }

    /// The per-device plan over the tutorial: both devices registered, with these agent twins.
    fn devices_plan(
        mode: DeploymentMode,
        agents: &BTreeMap<String, AgentTwin>,
        manage: bool,
    ) -> DevicePlan {
        let mut ex = crate::deploy::fixtures::tutorial();
        ex.spec.deployment_mode = mode;
        let identity = crate::ownership::HierarchyIdentity::new("iot", "tutorial", "uid-1");
        let configurations = if mode == DeploymentMode::Automatic {
            deploy::automatic_configurations(&identity, &ex.spec, &ex.topology, &ex.manifests)
                .unwrap()
        } else {
            Vec::new()
        };
        let devices: Vec<&DeviceSpec> = ex.spec.devices.iter().collect();
        plan_devices(&DevicePlanInput {
            spec: &ex.spec,
            topology: &ex.topology,
            manifests: &ex.manifests,
            devices: &devices,
            agents,
            configurations: &configurations,
            manage,
        })
        .unwrap()
    }

    /// The `$edgeAgent` desired properties the tutorial's `id` gets, as the hub echoes them.
    fn echoed_desired(id: &str, version: i64) -> Value {
        let ex = crate::deploy::fixtures::tutorial();
        let device = ex.spec.devices.iter().find(|d| d.id == id).unwrap();
        let layer = ex.topology.layer[id];
        let manifest =
            deploy::merged_manifest(device, layer, &ex.spec.edge, &ex.manifests).unwrap();
        let mut desired = manifest["modulesContent"]["$edgeAgent"]["properties.desired"].clone();
        desired["$version"] = json!(version);
        desired["$metadata"] = json!({"$lastUpdated": "2026-01-01T00:00:00Z"});
        desired
    }

    fn agent(id: &str, desired: Value) -> (String, AgentTwin) {
        let twin = AgentTwin {
            device_id: id.into(),
            properties: AgentProperties {
                desired,
                reported: Value::Null,
            },
            configurations: BTreeMap::new(),
        };
        (id.to_string(), twin)
    }

    #[test]
    fn agent_rows_select_only_what_health_needs() {
        let automatic = agent_query_fields(DeploymentMode::Automatic);
        assert_eq!(
            automatic,
            "deviceId, properties.desired.$version AS desiredVersion, \
             properties.reported.lastDesiredVersion AS lastDesiredVersion, \
             properties.reported.lastDesiredStatus AS lastDesiredStatus, \
             properties.reported.systemModules AS systemModules, \
             properties.reported.modules AS modules, configurations"
        );
        assert!(!automatic.contains("$metadata") && !automatic.contains("*"));
        assert!(
            agent_query_fields(DeploymentMode::PerDevice)
                .contains("AS desiredVersion, properties.desired AS desired,")
        );
    }

    #[test]
    fn a_module_twin_from_a_get_becomes_an_agent_twin() {
        let twin: crate::iothub::Twin = serde_json::from_value(json!({
            "deviceId": "p-low", "moduleId": "$edgeAgent", "etag": "AAAA",
            "properties": {
                "desired": {"schemaVersion": "1.1", "$version": 4, "$metadata": {}},
                "reported": {"lastDesiredVersion": 4, "$version": 2},
            },
            "configurations": {"c1": {"status": "Applied"}},
        }))
        .unwrap();
        let agent = AgentTwin::from_twin(&twin).unwrap();
        assert_eq!(agent.device_id, "p-low");
        assert_eq!(agent.properties.desired["$version"], 4);
        assert_eq!(agent.properties.reported["lastDesiredVersion"], 4);
        assert!(agent.configurations.is_empty(), "the twin model has none");
    }

    #[test]
    fn an_agent_row_becomes_the_twin_health_reads() {
        let row = json!({
            "deviceId": "top-layer",
            "desiredVersion": 4,
            "lastDesiredVersion": 4,
            "lastDesiredStatus": {"code": 200},
            "systemModules": {"edgeAgent": {"runtimeStatus": "running"}},
            "modules": null,
            "configurations": {"h-base-1": {"status": "Applied"}},
        });
        let twin = AgentTwin::from_row(&row).unwrap();
        assert_eq!(twin.device_id, "top-layer");
        assert_eq!(twin.properties.desired, json!({"$version": 4}));
        assert_eq!(
            twin.properties.reported,
            json!({
                "lastDesiredVersion": 4,
                "lastDesiredStatus": {"code": 200},
                "systemModules": {"edgeAgent": {"runtimeStatus": "running"}},
            }),
            "a null field is left out, as if not reported"
        );
        assert_eq!(
            twin.configurations["h-base-1"].status.as_deref(),
            Some("Applied")
        );

        // An agent that never reported: every reported field null, so nothing is reported.
        let silent = json!({"deviceId": "lower-layer", "desiredVersion": 1,
            "lastDesiredVersion": null, "lastDesiredStatus": null,
            "systemModules": null, "modules": null, "configurations": null});
        let twin = AgentTwin::from_row(&silent).unwrap();
        assert_eq!(twin.properties.reported, Value::Null);
        assert!(twin.configurations.is_empty());

        // PerDevice rows carry the whole desired properties; the version comes on its own.
        let per_device =
            json!({"deviceId": "d", "desiredVersion": 3, "desired": {"schemaVersion": "1.1"}});
        let twin = AgentTwin::from_row(&per_device).unwrap();
        assert_eq!(twin.properties.desired["schemaVersion"], "1.1");
        assert_eq!(twin.properties.desired["$version"], 3);
        assert!(AgentTwin::from_row(&json!({"desired": {}})).is_none());
    }

    #[test]
    fn per_device_mode_applies_the_manifest_to_a_device_that_has_none() {
        let plan = devices_plan(DeploymentMode::PerDevice, &BTreeMap::new(), true);
        let applied: Vec<&str> = plan.apply.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(applied, ["top-layer", "lower-layer"]);
        assert!(plan.drift.is_empty(), "a first apply is not drift");
        assert!(
            !plan.deployments["top-layer"].2,
            "not applied until the device has it"
        );
    }

    #[test]
    fn per_device_mode_leaves_a_matching_manifest_alone_and_counts_it_applied() {
        let agents: BTreeMap<String, AgentTwin> = ["top-layer", "lower-layer"]
            .into_iter()
            .map(|id| agent(id, echoed_desired(id, 2)))
            .collect();
        let plan = devices_plan(DeploymentMode::PerDevice, &agents, true);
        assert!(plan.apply.is_empty() && plan.drift.is_empty());
        assert_eq!(
            plan.deployments["lower-layer"],
            ("lower-layer".to_string(), None, true)
        );
    }

    #[test]
    fn per_device_mode_restores_a_replaced_manifest_or_only_reports_it_under_observe() {
        let agents = BTreeMap::from([
            agent("top-layer", json!({"schemaVersion": "1.1", "$version": 3})),
            agent("lower-layer", echoed_desired("lower-layer", 2)),
        ]);
        let manage = devices_plan(DeploymentMode::PerDevice, &agents, true);
        assert_eq!(manage.apply.len(), 1);
        assert!(manage.drift[0].contains("\"top-layer\": its deployment manifest was replaced outside the operator; re-applied"), "{:?}", manage.drift);
        let observe = devices_plan(DeploymentMode::PerDevice, &agents, false);
        assert!(observe.apply.is_empty());
        assert!(observe.drift[0].ends_with("not corrected (reconcile: Observe)"));
    }

    #[test]
    fn automatic_mode_reads_applied_from_the_configuration_state_on_the_twin() {
        let configurations = {
            let ex = crate::deploy::fixtures::tutorial();
            let identity = crate::ownership::HierarchyIdentity::new("iot", "tutorial", "uid-1");
            deploy::automatic_configurations(&identity, &ex.spec, &ex.topology, &ex.manifests)
                .unwrap()
        };
        let top = configurations
            .iter()
            .find(|c| c.deployment == "top-layer")
            .unwrap();
        let (_, mut twin) = agent("top-layer", Value::Null);
        twin.configurations.insert(
            top.id.clone(),
            AppliedConfiguration {
                status: Some("Applied".into()),
            },
        );
        let agents = BTreeMap::from([("top-layer".to_string(), twin)]);
        let plan = devices_plan(DeploymentMode::Automatic, &agents, true);
        assert!(
            plan.apply.is_empty(),
            "Automatic mode never applies per device"
        );
        assert_eq!(
            plan.deployments["top-layer"],
            ("top-layer".to_string(), Some(top.id.clone()), true)
        );
        assert!(!plan.deployments["lower-layer"].2);
        assert!(plan.deployments["lower-layer"].1.is_some());
    }

    #[test]
    fn every_device_with_a_manifest_gets_module_health() {
        let plan = devices_plan(DeploymentMode::Automatic, &BTreeMap::new(), true);
        let modules = &plan.modules["lower-layer"];
        assert!(modules.desired > 0);
        assert_eq!(modules.running, 0, "nothing reported yet");
    }

    #[test]
    fn the_hub_wide_configuration_limit_counts_old_and_new_at_once() {
        let want = desired("h-base-2");
        let plan = ConfigurationPlan {
            create: vec!["h-base-2".into()],
            delete: vec!["h-base-1".into()],
            ..Default::default()
        };
        // 99 in the hub (the old one among them) + the new one = 100: fits.
        assert_eq!(
            check_configuration_limit(99, &plan, std::slice::from_ref(&want)),
            Ok(())
        );
        // 100 + 1 during the swap: refused, naming the deployment.
        let errors =
            check_configuration_limit(100, &plan, std::slice::from_ref(&want)).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].deployment, "base");
        assert!(errors[0].problem.contains("(101)"), "{}", errors[0].problem);
        // Replaced under the same id: deleted first, nothing added.
        let same = ConfigurationPlan {
            create: vec!["h-base-2".into()],
            delete: vec!["h-base-2".into()],
            ..Default::default()
        };
        assert_eq!(check_configuration_limit(100, &same, &[want]), Ok(()));
        // Nothing to create: a full hub is not this hierarchy's problem.
        assert_eq!(
            check_configuration_limit(150, &ConfigurationPlan::default(), &[]),
            Ok(())
        );
    }
}
