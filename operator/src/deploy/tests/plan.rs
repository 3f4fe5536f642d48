use serde_json::json;

use super::*;
use crate::deploy::fixtures::*;
use crate::names::short_hash;
use crate::ownership::{HierarchyIdentity, ownership_tags};

const UID: &str = "0b5c1f7e-0000-4000-8000-000000000001";

fn owner() -> HierarchyIdentity {
    HierarchyIdentity::new("default", "factory", UID)
}

/// Evaluates the subset of the IoT Hub query language target conditions use (`A AND B ...`, each
/// `path=value` or `path>number`) against a twin's tags, independently of how they were built.
fn matches(condition: &str, tags: &Value) -> bool {
    condition.split(" AND ").all(|clause| {
        let (path, op, literal) = if let Some((p, l)) = clause.split_once('=') {
            (p, '=', l)
        } else if let Some((p, l)) = clause.split_once('>') {
            (p, '>', l)
        } else {
            panic!("unexpected clause {clause}")
        };
        let pointer = format!(
            "/{}",
            path.strip_prefix("tags.")
                .expect("over tags")
                .replace('.', "/")
        );
        let Some(value) = tags.pointer(&pointer) else {
            return false;
        };
        let literal: Value = if let Some(s) = literal
            .strip_prefix('\'')
            .and_then(|l| l.strip_suffix('\''))
        {
            Value::String(s.replace("''", "'"))
        } else {
            serde_json::from_str(literal).expect("number or boolean literal")
        };
        match op {
            '=' => value == &literal,
            _ => value
                .as_f64()
                .zip(literal.as_f64())
                .is_some_and(|(v, l)| v > l),
        }
    })
}

#[test]
fn tutorial_needs_one_configuration_per_layer() {
    let ex = tutorial();
    let owner = HierarchyIdentity::new("default", "tutorial", UID);
    let plan = automatic_configurations(&owner, &ex.spec, &ex.topology, &ex.manifests).unwrap();
    let summary: Vec<(&str, Variant, i32, &[String])> = plan
        .iter()
        .map(|c| {
            (
                c.deployment.as_str(),
                c.variant,
                c.priority,
                c.devices.as_slice(),
            )
        })
        .collect();
    let mut summary = summary;
    summary.sort();
    assert_eq!(
        summary,
        [
            (
                "lower-layer",
                Variant::Lower,
                10,
                &["lower-layer".to_string()][..]
            ),
            (
                "top-layer",
                Variant::Top,
                10,
                &["top-layer".to_string()][..]
            ),
        ]
    );
    let lower = plan.iter().find(|c| c.deployment == "lower-layer").unwrap();
    assert_eq!(
        lower.target_condition,
        format!(
            "tags.edgeHierarchy.uid='{UID}' AND tags.edgeHierarchy.deployment='lower-layer' AND tags.edgeHierarchy.layer>1"
        )
    );
    assert_eq!(
        lower
            .content
            .pointer(&agent("/modules/SimulatedTemperatureSensor/settings/image")),
        Some(&json!(
            "$upstream:443/azureiotedge-simulated-temperature-sensor:1.5"
        ))
    );
    assert!(
        lower.id.starts_with("tutorial-lower-layer-"),
        "{}",
        lower.id
    );
    assert!(!lower.layered);
    assert_eq!(lower.labels["edgeHierarchyVariant"], "lower");
    let top = plan.iter().find(|c| c.deployment == "top-layer").unwrap();
    assert_eq!(
        top.content,
        content(&ex.spec, "top-layer"),
        "top layer content as written"
    );
}

#[test]
fn factory_configurations_target_exactly_their_devices() {
    let ex = factory();
    let plan = automatic_configurations(&owner(), &ex.spec, &ex.topology, &ex.manifests).unwrap();
    let mut keys: Vec<(String, Variant, usize)> = plan
        .iter()
        .map(|c| (c.deployment.clone(), c.variant, c.devices.len()))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("cell".into(), Variant::Lower, 8),
            ("enterprise".into(), Variant::Top, 1),
            ("gateway".into(), Variant::Lower, 14),
            ("monitoring".into(), Variant::Top, 1),
            ("monitoring".into(), Variant::Lower, 6),
        ]
    );
    let ids: std::collections::BTreeSet<&str> = plan.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), plan.len(), "ids are unique");
    assert!(plan.windows(2).all(|w| w[0].id < w[1].id), "sorted by id");
    // The conditions over the tags the operator writes select exactly the planned devices.
    for device in &ex.spec.devices {
        let tags = ownership_tags(&owner(), device, ex.topology.layer[&device.id]);
        for c in &plan {
            assert_eq!(
                matches(&c.target_condition, &tags),
                c.devices.contains(&device.id),
                "{} vs {}",
                c.id,
                device.id
            );
        }
    }
    let monitoring = plan
        .iter()
        .find(|c| c.deployment == "monitoring" && c.variant == Variant::Lower)
        .unwrap();
    assert!(monitoring.layered);
    assert_eq!(monitoring.priority, 20);
    assert_eq!(
        monitoring.content["modulesContent"]["$edgeAgent"]["properties.desired.modules.metricsCollector"]
            ["settings"]["image"],
        json!("$upstream:443/azureiotedge-metrics-collector:1.1")
    );
    // Another tags owner (a second hierarchy of the same name) matches nothing.
    let foreign = ownership_tags(
        &HierarchyIdentity::new("other", "factory", "another-uid"),
        &ex.spec.devices[0],
        1,
    );
    assert!(plan.iter().all(|c| !matches(&c.target_condition, &foreign)));
}

#[test]
fn ids_change_with_content_priority_and_owner_but_not_with_key_order() {
    let ex = tutorial();
    let plan = |spec: &crate::api::EdgeHierarchySpec, uid: &str| {
        let manifests = crate::deploy::resolve_manifests(spec, |_| None).unwrap();
        let owner = HierarchyIdentity::new("default", "tutorial", uid);
        automatic_configurations(&owner, spec, &ex.topology, &manifests)
            .unwrap()
            .into_iter()
            .map(|c| (c.deployment.clone(), c.id))
            .collect::<BTreeMap<_, _>>()
    };
    let base = plan(&ex.spec, UID);
    assert_eq!(plan(&ex.spec, UID), base, "stable");
    assert_ne!(plan(&ex.spec, "other-uid")["top-layer"], base["top-layer"]);

    let mut changed = ex.spec.clone();
    let c = changed.deployments[1].content.as_mut().unwrap();
    *at(
        c,
        &agent("/modules/SimulatedTemperatureSensor/settings/image"),
    ) = json!("mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.6");
    let after = plan(&changed, UID);
    assert_ne!(after["lower-layer"], base["lower-layer"]);
    assert_eq!(
        after["top-layer"], base["top-layer"],
        "other deployments keep their ids"
    );

    let mut reprioritised = ex.spec.clone();
    reprioritised.deployments[0].priority = 11;
    assert_ne!(plan(&reprioritised, UID)["top-layer"], base["top-layer"]);

    // The same content written in another key order hashes the same.
    let mut reordered = ex.spec.clone();
    let original = reordered.deployments[1].content.take().unwrap();
    let text = original.to_string();
    let reversed: Value = serde_json::from_str(
        &reverse_keys(&serde_json::from_str::<Value>(&text).unwrap()).to_string(),
    )
    .unwrap();
    reordered.deployments[1].content = Some(reversed);
    assert_eq!(plan(&reordered, UID), base);
}

fn reverse_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m.iter().rev() {
                out.insert(k.clone(), reverse_keys(v));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

#[test]
fn canonical_json_sorts_keys_at_every_level() {
    assert_eq!(
        canonical_json(&json!({"b": 1, "a": {"d": [ {"z": 1, "y": 2} ], "c": null}})),
        r#"{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}"#
    );
}

#[test]
fn missing_inputs_are_errors_naming_the_device() {
    let ex = tutorial();
    let mut manifests = ex.manifests.clone();
    manifests.remove("lower-layer");
    let e = automatic_configurations(&owner(), &ex.spec, &ex.topology, &manifests).unwrap_err();
    assert_eq!(
        e.to_string(),
        "deployment \"lower-layer\": device \"lower-layer\" uses it but its manifest was not resolved; fix: resolve and validate the manifests of the same spec before planning"
    );
    let mut topology = ex.topology.clone();
    topology.layer.remove("lower-layer");
    topology.order.retain(|d| d != "lower-layer");
    let e = automatic_configurations(&owner(), &ex.spec, &topology, &ex.manifests).unwrap_err();
    assert_eq!(e.path, "spec.devices[lower-layer]");
}

#[test]
fn debug_redacts_content() {
    let ex = tutorial();
    let mut plan =
        automatic_configurations(&owner(), &ex.spec, &ex.topology, &ex.manifests).unwrap();
    plan[0].content["modulesContent"]["$edgeAgent"]["properties.desired"]["runtime"]["settings"]
        ["registryCredentials"] =
        json!({"acr": {"username": "u", "password": "hunter2", "address": "a"}});
    let debug = format!("{:?}", plan[0]);
    assert!(
        !debug.contains("hunter2") && debug.contains("<redacted>"),
        "{debug}"
    );
}

fn is_valid_configuration_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || "-:+%_#*?!(),=@;$'".contains(c)
        })
}

#[test]
fn configuration_ids_are_valid_for_any_names() {
    let id = configuration_id("tutorial", "top-layer", "x");
    assert!(
        id.starts_with("tutorial-top-layer-") && id.len() == "tutorial-top-layer-".len() + 8,
        "{id}"
    );
    for (hierarchy, deployment) in [
        ("my.hierarchy", "top-layer"),
        ("UPPER", "Case"),
        ("ÄÖÜ", "a/b\\c\"d e{f}"),
        (&"h".repeat(253) as &str, &"d".repeat(63) as &str),
    ] {
        let id = configuration_id(hierarchy, deployment, "input");
        assert!(
            is_valid_configuration_id(&id),
            "{hierarchy}/{deployment} -> {id}"
        );
        assert!(
            id.ends_with(&format!("-{}", short_hash("input"))),
            "the hash survives shortening: {id}"
        );
    }
    assert_eq!(
        configuration_id("my.hierarchy", "a", "x"),
        format!("my-hierarchy-a-{}", short_hash("x"))
    );
    assert_ne!(
        configuration_id("h", "d", "one"),
        configuration_id("h", "d", "two")
    );
    assert_eq!(
        configuration_id("h", "d", "one"),
        configuration_id("h", "d", "one")
    );
}
