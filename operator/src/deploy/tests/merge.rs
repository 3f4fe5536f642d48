use serde_json::json;

use super::*;
use crate::api::{DeploymentSpec, EdgeHierarchySpec};
use crate::deploy::fixtures::*;
use crate::deploy::manifest::{Manifest, resolve_manifests};

fn device(spec: &EdgeHierarchySpec, id: &str) -> DeviceSpec {
    spec.devices
        .iter()
        .find(|d| d.id == id)
        .cloned()
        .expect("device in spec")
}

fn has_dotted_keys(v: &Value) -> bool {
    match v {
        Value::Object(m) => m
            .iter()
            .any(|(k, v)| k.starts_with("properties.desired.") || has_dotted_keys(v)),
        _ => false,
    }
}

fn layered(name: &str, priority: i32, content: Value) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        priority,
        layered: true,
        content: Some(content),
        config_map_ref: None,
        registry_credentials: Vec::new(),
    }
}

fn sensor_module(image: &str) -> Value {
    json!({"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": image, "createOptions": ""}})
}

#[test]
fn a_device_without_layers_gets_its_rendered_base() {
    let ex = tutorial();
    let lower = device(&ex.spec, "lower-layer");
    let merged = merged_manifest(&lower, 2, &ex.spec.edge, &ex.manifests).unwrap();
    assert_eq!(
        merged,
        render_content(
            &content(&ex.spec, "lower-layer"),
            Variant::Lower,
            &ex.spec.edge
        )
    );
    let top = device(&ex.spec, "top-layer");
    assert_eq!(
        merged_manifest(&top, 1, &ex.spec.edge, &ex.manifests).unwrap(),
        content(&ex.spec, "top-layer")
    );
}

#[test]
fn factory_cells_get_the_layered_collector_in_full_form() {
    let ex = factory();
    let cell = device(&ex.spec, "site1-area1-line1-cell1");
    let merged = merged_manifest(&cell, 5, &ex.spec.edge, &ex.manifests).unwrap();
    let modules = merged
        .pointer(&agent("/modules"))
        .unwrap()
        .as_object()
        .unwrap();
    assert_eq!(
        modules.keys().collect::<Vec<_>>(),
        ["SimulatedTemperatureSensor", "metricsCollector"]
    );
    assert_eq!(
        modules["metricsCollector"]["settings"]["image"],
        json!("$upstream:443/azureiotedge-metrics-collector:1.1")
    );
    assert!(
        !has_dotted_keys(&merged),
        "ready for applyConfigurationContent: {merged}"
    );
    assert_eq!(
        validate_full(&merged),
        Ok(()),
        "the merged manifest is a valid standard manifest"
    );
    // A cell without the layer has only the sensor.
    let plain = device(&ex.spec, "site1-area1-line2-cell1");
    let merged = merged_manifest(&plain, 5, &ex.spec.edge, &ex.manifests).unwrap();
    assert_eq!(
        merged
            .pointer(&agent("/modules"))
            .unwrap()
            .as_object()
            .unwrap()
            .len(),
        1
    );
}

fn validate_full(content: &Value) -> Result<(), Vec<ManifestError>> {
    crate::deploy::validate_manifest("merged", false, content)
}

/// The tutorial with extra layered deployments on the top-layer device.
fn with_layers(layers: Vec<DeploymentSpec>) -> (EdgeHierarchySpec, Manifests) {
    let mut spec = tutorial().spec;
    spec.devices[0].layered_deployments = layers.iter().map(|l| l.name.clone()).collect();
    spec.deployments.extend(layers);
    let manifests = resolve_manifests(&spec, |_| None).unwrap_or_else(|e| panic!("{e:?}"));
    (spec, manifests)
}

#[test]
fn higher_priority_layers_win_clashes_in_order() {
    let (spec, manifests) = with_layers(vec![
        layered(
            "b-high",
            30,
            json!({"modulesContent": {"$edgeAgent": {"properties.desired.modules.registry": sensor_module("mcr.microsoft.com/registry-from-b:1")}}}),
        ),
        layered(
            "a-mid",
            20,
            json!({"modulesContent": {"$edgeAgent": {
                "properties.desired.modules.registry": sensor_module("mcr.microsoft.com/registry-from-a:1"),
                "properties.desired.modules.extra": sensor_module("mcr.microsoft.com/extra:1"),
            }}}),
        ),
    ]);
    let merged = merged_manifest(&spec.devices[0], 1, &spec.edge, &manifests).unwrap();
    assert_eq!(
        merged.pointer(&agent("/modules/registry/settings/image")),
        Some(&json!("mcr.microsoft.com/registry-from-b:1"))
    );
    assert_eq!(
        merged.pointer(&agent("/modules/extra/settings/image")),
        Some(&json!("mcr.microsoft.com/extra:1"))
    );
    assert_eq!(
        merged.pointer(&agent("/modules/IoTEdgeAPIProxy/settings/image")),
        Some(&json!("mcr.microsoft.com/azureiotedge-api-proxy:1.1"))
    );
}

#[test]
fn a_layer_not_above_the_base_does_not_replace_base_modules() {
    // resolve_manifests rejects this spec; merging unvalidated input still follows IoT Hub's rule.
    let ex = tutorial();
    let mut manifests = ex.manifests.clone();
    let low = json!({"modulesContent": {"$edgeAgent": {
        "properties.desired.modules.registry": sensor_module("mcr.microsoft.com/low:1"),
        "properties.desired.modules.added": sensor_module("mcr.microsoft.com/added:1"),
    }}});
    manifests.insert(
        "low".into(),
        Manifest {
            name: "low".into(),
            priority: 10,
            layered: true,
            content: low,
        },
    );
    let mut top = ex.spec.devices[0].clone();
    top.layered_deployments = vec!["low".into()];
    let merged = merged_manifest(&top, 1, &ex.spec.edge, &manifests).unwrap();
    assert_eq!(
        merged.pointer(&agent("/modules/registry/settings/image")),
        Some(&json!("registry:latest"))
    );
    assert_eq!(
        merged.pointer(&agent("/modules/added/settings/image")),
        Some(&json!("mcr.microsoft.com/added:1"))
    );
}

#[test]
fn equal_priority_layers_apply_in_the_devices_order() {
    let ex = tutorial();
    let mut manifests = ex.manifests.clone();
    for (name, image) in [
        ("first", "mcr.microsoft.com/first:1"),
        ("second", "mcr.microsoft.com/second:1"),
    ] {
        let content = json!({"modulesContent": {"$edgeAgent": {"properties.desired.modules.m": sensor_module(image)}}});
        manifests.insert(
            name.into(),
            Manifest {
                name: name.into(),
                priority: 20,
                layered: true,
                content,
            },
        );
    }
    let mut top = ex.spec.devices[0].clone();
    top.layered_deployments = vec!["second".into(), "first".into()];
    let merged = merged_manifest(&top, 1, &ex.spec.edge, &manifests).unwrap();
    assert_eq!(
        merged.pointer(&agent("/modules/m/settings/image")),
        Some(&json!("mcr.microsoft.com/first:1"))
    );
}

#[test]
fn routes_credentials_and_module_twins_merge() {
    let (spec, manifests) = with_layers(vec![
        layered(
            "twins",
            20,
            json!({"modulesContent": {
                "$edgeAgent": {
                    "properties.desired.modules.sensor": sensor_module("mcr.microsoft.com/sensor:1"),
                    "properties.desired.runtime.settings.registryCredentials.acr": {"username": "u", "password": "p", "address": "acr.example.io"},
                },
                "$edgeHub": {"properties.desired.routes.sensorToUpstream": "FROM /messages/modules/sensor/* INTO $upstream"},
                "sensor": {"properties.desired": {"SendInterval": 5, "SendData": true}},
            }}),
        ),
        layered(
            "tuning",
            30,
            json!({"modulesContent": {
                "$edgeAgent": {},
                "sensor": {"properties.desired.SendInterval": 10, "properties.desired.limits.max": 3},
            }}),
        ),
    ]);
    let merged = merged_manifest(&spec.devices[0], 1, &spec.edge, &manifests).unwrap();
    assert_eq!(
        merged.pointer(&agent("/runtime/settings/registryCredentials/acr")),
        Some(&json!({"username": "u", "password": "p", "address": "acr.example.io"}))
    );
    assert_eq!(
        merged.pointer("/modulesContent/$edgeHub/properties.desired/routes"),
        Some(
            &json!({"route": "FROM /messages/* INTO $upstream", "sensorToUpstream": "FROM /messages/modules/sensor/* INTO $upstream"})
        )
    );
    assert_eq!(
        merged.pointer("/modulesContent/sensor"),
        Some(
            &json!({"properties.desired": {"SendInterval": 10, "SendData": true, "limits": {"max": 3}}})
        )
    );
    assert!(!has_dotted_keys(&merged));
    assert_eq!(validate_full(&merged), Ok(()));
}

#[test]
fn a_section_does_not_override_a_higher_priority_whole_twin() {
    let (spec, manifests) = with_layers(vec![
        layered(
            "section",
            20,
            json!({"modulesContent": {"$edgeAgent": {}, "registry": {"properties.desired.a": 1}}}),
        ),
        layered(
            "whole",
            30,
            json!({"modulesContent": {"$edgeAgent": {}, "registry": {"properties.desired": {"b": 2}}}}),
        ),
    ]);
    let merged = merged_manifest(&spec.devices[0], 1, &spec.edge, &manifests).unwrap();
    assert_eq!(
        merged.pointer("/modulesContent/registry"),
        Some(&json!({"properties.desired": {"b": 2}}))
    );
}

#[test]
fn missing_deployments_are_errors_naming_the_device() {
    let ex = tutorial();
    let mut leafish = ex.spec.devices[1].clone();
    leafish.deployment = None;
    assert_eq!(
        merged_manifest(&leafish, 2, &ex.spec.edge, &ex.manifests)
            .unwrap_err()
            .to_string(),
        "deployment \"\": spec.devices[lower-layer].deployment: device \"lower-layer\" has no base deployment to apply; fix: name the device's deployment"
    );
    let mut unknown = ex.spec.devices[1].clone();
    unknown.layered_deployments = vec!["ghost".into()];
    assert_eq!(
        merged_manifest(&unknown, 2, &ex.spec.edge, &ex.manifests)
            .unwrap_err()
            .to_string(),
        "deployment \"ghost\": spec.devices[lower-layer]: device \"lower-layer\" lists it but it is not resolved; fix: resolve and validate the manifests of the same spec before merging"
    );
}
