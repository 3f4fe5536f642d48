use serde_json::json;

use super::*;
use crate::deploy::fixtures::*;

fn images(content: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("image", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    walk(content, &mut out);
    out.sort();
    out
}

#[test]
fn variants_by_layer() {
    assert_eq!(Variant::for_layer(0), Variant::Top);
    assert_eq!(Variant::for_layer(1), Variant::Top);
    assert_eq!(Variant::for_layer(2), Variant::Lower);
    assert_eq!(Variant::for_layer(5), Variant::Lower);
    assert_eq!(Variant::Lower.to_string(), "lower");
    assert_eq!(Variant::Top.as_str(), "top");
}

#[test]
fn the_tutorial_lower_layer_pulls_everything_through_upstream() {
    let ex = tutorial();
    let lower = content(&ex.spec, "lower-layer");
    let rendered = render_content(&lower, Variant::Lower, &ex.spec.edge);
    assert_eq!(
        images(&rendered),
        [
            "$upstream:443/azureiotedge-agent:1.5",
            "$upstream:443/azureiotedge-hub:1.5",
            "$upstream:443/azureiotedge-simulated-temperature-sensor:1.5",
        ]
    );
    // Only images change.
    let mut back = rendered.clone();
    for (pointer, original) in [
        (
            "/systemModules/edgeAgent/settings/image",
            "mcr.microsoft.com/azureiotedge-agent:1.5",
        ),
        (
            "/systemModules/edgeHub/settings/image",
            "mcr.microsoft.com/azureiotedge-hub:1.5",
        ),
        (
            "/modules/SimulatedTemperatureSensor/settings/image",
            "mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.5",
        ),
    ] {
        *at(&mut back, &agent(pointer)) = json!(original);
    }
    assert_eq!(back, lower);
    assert_eq!(
        render_content(&rendered, Variant::Lower, &ex.spec.edge),
        rendered,
        "idempotent"
    );
}

#[test]
fn the_top_layer_is_unchanged() {
    let ex = tutorial();
    let top = content(&ex.spec, "top-layer");
    assert_eq!(render_content(&top, Variant::Top, &ex.spec.edge), top);
    // The same deployment below the top: mcr images rewritten, the Docker Hub registry image kept.
    assert_eq!(
        images(&render_content(&top, Variant::Lower, &ex.spec.edge)),
        [
            "$upstream:443/azureiotedge-agent:1.5",
            "$upstream:443/azureiotedge-api-proxy:1.1",
            "$upstream:443/azureiotedge-hub:1.5",
            "registry:latest",
        ]
    );
}

#[test]
fn layered_dotted_modules_are_rewritten() {
    let ex = factory();
    let monitoring = content(&ex.spec, "monitoring");
    let rendered = render_content(&monitoring, Variant::Lower, &ex.spec.edge);
    assert_eq!(
        images(&rendered),
        ["$upstream:443/azureiotedge-metrics-collector:1.1"]
    );
    assert_eq!(
        render_content(&monitoring, Variant::Top, &ex.spec.edge),
        monitoring
    );
}

#[test]
fn malformed_content_is_left_alone() {
    let edge = crate::api::EdgeRuntimeSpec::default();
    for c in [
        json!(null),
        json!({"modulesContent": 1}),
        json!({"modulesContent": {"$edgeAgent": []}}),
        json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"modules": {"m": {"settings": {"image": 7}}, "n": 1}}}}}),
        json!({"modulesContent": {"$edgeAgent": {"properties.desired.modules.m": {"settings": "x"}}}}),
        json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"runtime": {"settings": {"registryCredentials": {"a": {"address": 5}, "b": 1}}}}}}}),
        json!({"modulesContent": {"$edgeAgent": {"properties.desired.runtime.settings.registryCredentials.c": "mcr.microsoft.com"}}}),
    ] {
        assert_eq!(render_content(&c, Variant::Lower, &edge), c);
    }
    // Module twins named like images are not touched: only $edgeAgent module settings are.
    let twin = json!({"modulesContent": {"m": {"properties.desired": {"settings": {"image": "mcr.microsoft.com/x"}}}}});
    assert_eq!(render_content(&twin, Variant::Lower, &edge), twin);
}

#[test]
fn layered_credentials_of_mirrored_registries_point_at_upstream_below_the_top() {
    let content = json!({"modulesContent": {"$edgeAgent": {
        "properties.desired.runtime.settings.registryCredentials.mcr": {"username": "u", "password": "p", "address": "mcr.microsoft.com"},
        "properties.desired.runtime.settings.registryCredentials.own": {"username": "u", "password": "p", "address": "own.example.com"},
    }}});
    let edge = crate::api::EdgeRuntimeSpec::default();
    let lower = render_content(&content, Variant::Lower, &edge);
    let agent = &lower["modulesContent"]["$edgeAgent"];
    assert_eq!(
        agent["properties.desired.runtime.settings.registryCredentials.mcr"]["address"],
        json!("$upstream:443")
    );
    assert_eq!(
        agent["properties.desired.runtime.settings.registryCredentials.own"]["address"],
        json!("own.example.com")
    );
    assert_eq!(
        render_content(&lower, Variant::Lower, &edge),
        lower,
        "idempotent"
    );
    assert_eq!(render_content(&content, Variant::Top, &edge), content);
}
