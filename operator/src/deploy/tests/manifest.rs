use serde_json::json;

use super::*;
use crate::api::{ConfigMapKeyRef, DeploymentSpec, DeviceSpec};
use crate::deploy::fixtures::*;

/// Display of every error, for exact comparison.
fn messages(result: Result<(), Vec<ManifestError>>) -> Vec<String> {
    result
        .expect_err("the manifest is invalid")
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn tutorial_lower() -> Value {
    content(&tutorial().spec, "lower-layer")
}

fn monitoring() -> Value {
    content(&factory().spec, "monitoring")
}

const SENSOR: &str =
    "modulesContent.$edgeAgent['properties.desired'].modules.SimulatedTemperatureSensor";

#[test]
fn every_example_deployment_validates() {
    for ex in [tutorial(), factory()] {
        for d in &ex.spec.deployments {
            let c = d.content.clone().expect("inline");
            assert_eq!(
                validate_manifest(&d.name, d.layered, &c),
                Ok(()),
                "{}",
                d.name
            );
        }
    }
    assert_eq!(factory().manifests.len(), 4);
}

#[test]
fn a_missing_image_names_deployment_path_and_fix() {
    let mut c = tutorial_lower();
    at(
        &mut c,
        &agent("/modules/SimulatedTemperatureSensor/settings"),
    )
    .as_object_mut()
    .unwrap()
    .remove("image");
    assert_eq!(
        messages(validate_manifest("lower-layer", false, &c)),
        [format!(
            "deployment \"lower-layer\": {SENSOR}.settings.image: required property missing; fix: add \"image\" with the \
             module's container image, for example \"mcr.microsoft.com/<repository>:<tag>\""
        )]
    );
}

#[test]
fn every_schema_error_is_reported_at_once() {
    let mut c = tutorial_lower();
    *at(&mut c, &agent("/modules/SimulatedTemperatureSensor/status")) = json!("paused");
    *at(
        &mut c,
        &agent("/systemModules/edgeHub/settings/createOptions"),
    ) = json!({"HostConfig": {}});
    at(&mut c, &agent("/runtime/settings"))
        .as_object_mut()
        .unwrap()
        .insert("bogus".into(), json!(1));
    at(&mut c, &agent("/modules"))
        .as_object_mut()
        .unwrap()
        .insert("bad.name".into(), json!({}));
    at(
        &mut c,
        &agent("/modules/SimulatedTemperatureSensor/settings"),
    )
    .as_object_mut()
    .unwrap()
    .insert("foo".into(), json!(1));
    *at(
        &mut c,
        "/modulesContent/$edgeHub/properties.desired/routes/route",
    ) = json!(5);
    at(&mut c, &agent("/modules/SimulatedTemperatureSensor"))
        .as_object_mut()
        .unwrap()
        .insert("startupOrder".into(), json!(-1));
    let got = messages(validate_manifest("lower-layer", false, &c));
    let want = [
        "deployment \"lower-layer\": modulesContent.$edgeAgent['properties.desired'].modules['bad.name']: property not allowed here; fix: remove it or correct its name; allowed here: a name matching ^[a-zA-Z0-9_-]+$".to_string(),
        format!("deployment \"lower-layer\": {SENSOR}.settings.foo: property not allowed here; fix: remove it or correct its name; allowed here: one of image, or a name matching ^(createoptions|createOptions)[0-9]*$"),
        format!("deployment \"lower-layer\": {SENSOR}.startupOrder: is below the minimum 0; fix: use a value of at least 0"),
        format!("deployment \"lower-layer\": {SENSOR}.status: must be one of running, stopped; fix: use one of running, stopped"),
        "deployment \"lower-layer\": modulesContent.$edgeAgent['properties.desired'].runtime.settings.bogus: property not allowed here; fix: remove it or correct its name; allowed here: one of loggingOptions, minDockerVersion, registryCredentials".to_string(),
        "deployment \"lower-layer\": modulesContent.$edgeAgent['properties.desired'].systemModules.edgeHub.settings.createOptions: expected a string, found an object; fix: write createOptions as a string holding JSON, for example '{\"HostConfig\":{}}' (quote it in YAML)".to_string(),
        "deployment \"lower-layer\": modulesContent.$edgeHub['properties.desired'].routes.route: is not a route; fix: write the route as a string \"FROM <source> [WHERE <condition>] INTO <sink>\", or as an object {route, priority (0-9), timeToLiveSecs}".to_string(),
    ];
    let mut want = want.to_vec();
    want.sort();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, want);
}

#[test]
fn schema_version_picks_the_schema() {
    // edgeHub 1.2 allows mqttBroker; 1.1 does not.
    let mut c = tutorial_lower();
    let hub = at(&mut c, "/modulesContent/$edgeHub/properties.desired");
    hub["mqttBroker"] = json!({"bridges": []});
    assert_eq!(
        messages(validate_manifest("d", false, &c)),
        [
            "deployment \"d\": modulesContent.$edgeHub['properties.desired'].mqttBroker: property not allowed here; fix: remove it or correct its name; allowed here: one of routes, schemaVersion, storeAndForwardConfiguration"
        ]
    );
    *at(
        &mut c,
        "/modulesContent/$edgeHub/properties.desired/schemaVersion",
    ) = json!("1.2");
    assert_eq!(validate_manifest("d", false, &c), Ok(()));
    *at(
        &mut c,
        "/modulesContent/$edgeHub/properties.desired/schemaVersion",
    ) = json!("1.3");
    *at(&mut c, &agent("/schemaVersion")) = json!("1.0");
    assert_eq!(
        messages(validate_manifest("d", false, &c)),
        [
            "deployment \"d\": modulesContent.$edgeAgent['properties.desired'].schemaVersion: schemaVersion \"1.0\" has no $edgeAgent schema the operator validates with; fix: set schemaVersion to \"1.1\" (IoT Edge 1.4 and later read it)",
            "deployment \"d\": modulesContent.$edgeHub['properties.desired'].schemaVersion: schemaVersion \"1.3\" has no $edgeHub schema the operator validates with; fix: set schemaVersion to \"1.1\" or \"1.2\" (IoT Edge 1.4 and later read it)",
        ]
    );
    // A missing schemaVersion is reported by the schema itself.
    at(&mut c, &agent(""))
        .as_object_mut()
        .unwrap()
        .remove("schemaVersion");
    *at(
        &mut c,
        "/modulesContent/$edgeHub/properties.desired/schemaVersion",
    ) = json!("1.2");
    assert_eq!(
        messages(validate_manifest("d", false, &c)),
        [
            "deployment \"d\": modulesContent.$edgeAgent['properties.desired'].schemaVersion: required property missing; fix: add \"schemaVersion\" (\"1.1\"; edgeHub also accepts \"1.2\")"
        ]
    );
}

#[test]
fn content_shape_errors() {
    assert_eq!(
        messages(validate_manifest("d", false, &json!([1]))),
        [
            "deployment \"d\": the content is not an object; fix: write the manifest as {\"modulesContent\": {\"$edgeAgent\": ..., \"$edgeHub\": ...}}"
        ]
    );
    assert_eq!(
        messages(validate_manifest("d", false, &json!({"deviceContent": {}}))),
        [
            "deployment \"d\": deviceContent: property not allowed here; fix: IoT Edge deployments carry modulesContent only; remove this key",
            "deployment \"d\": modulesContent: required property missing; fix: add modulesContent with the $edgeAgent and $edgeHub twins",
        ]
    );
    assert_eq!(
        messages(validate_manifest(
            "d",
            true,
            &json!({"modulesContent": "x", "extra": 1})
        )),
        [
            "deployment \"d\": extra: property not allowed here; fix: remove it; a deployment's content holds only modulesContent",
            "deployment \"d\": modulesContent: expected an object; fix: write modulesContent as an object keyed by twin",
        ]
    );
    let mut c = tutorial_lower();
    at(&mut c, "/modulesContent")
        .as_object_mut()
        .unwrap()
        .remove("$edgeHub");
    assert_eq!(
        messages(validate_manifest("d", false, &c)),
        [
            "deployment \"d\": modulesContent.$edgeHub: required property missing; fix: add $edgeHub with its \"properties.desired\" (a standard deployment sets both system twins)"
        ]
    );
}

#[test]
fn standard_deployments_reject_the_dotted_form_and_stray_twins() {
    let mut c = tutorial_lower();
    let modules = at(&mut c, "/modulesContent").as_object_mut().unwrap();
    modules["$edgeAgent"]["properties.desired.modules.extra"] = json!({});
    modules.insert(
        "SimulatedTemperatureSensor".into(),
        json!({"properties.desired": {"SendInterval": 5}}),
    );
    modules.insert(
        "simulatedtemperaturesensor".into(),
        json!({"properties.desired": {}}),
    );
    modules.insert("$edgeFoo".into(), json!({}));
    modules.insert("sensor2".into(), json!({"properties.desired.section": 1}));
    assert_eq!(
        messages(validate_manifest("d", false, &c)),
        [
            "deployment \"d\": modulesContent.$edgeAgent['properties.desired.modules.extra']: property not allowed here; fix: dotted keys belong to layered deployments: set `layered: true` on this deployment, or write the entry inside \"properties.desired\"",
            "deployment \"d\": modulesContent.$edgeFoo: unknown system twin; fix: only $edgeAgent and $edgeHub are system twins; correct the name",
            "deployment \"d\": modulesContent.sensor2: sets the twin of module \"sensor2\", which this deployment does not run; fix: correct the name (module names are case-sensitive) or add the module under $edgeAgent modules",
            "deployment \"d\": modulesContent.sensor2['properties.desired.section']: property not allowed here; fix: use \"properties.desired\"; dotted \"properties.desired.<section>\" keys need `layered: true`",
            "deployment \"d\": modulesContent.simulatedtemperaturesensor: sets the twin of module \"simulatedtemperaturesensor\", which this deployment does not run; fix: correct the name (module names are case-sensitive) or add the module under $edgeAgent modules",
        ]
    );
}

#[test]
fn layered_entries_are_checked_against_the_module_route_and_credential_schemas() {
    assert_eq!(validate_manifest("monitoring", true, &monitoring()), Ok(()));
    let key = "properties.desired.modules.metricsCollector";
    let mut c = monitoring();
    at(
        &mut c,
        &format!("/modulesContent/$edgeAgent/{key}/settings"),
    )
    .as_object_mut()
    .unwrap()
    .remove("image");
    let agent_entries = at(&mut c, "/modulesContent/$edgeAgent")
        .as_object_mut()
        .unwrap();
    agent_entries.insert(
        "properties.desired.modules.bad.name".into(),
        agent_entries[key].clone(),
    );
    agent_entries.insert(
        "properties.desired.runtime.settings.registryCredentials.acr".into(),
        json!({"username": "u", "password": "hunter2", "address": "bad address"}),
    );
    agent_entries.insert("properties.desired.systemModules.edgeHub".into(), json!({}));
    let modules = at(&mut c, "/modulesContent").as_object_mut().unwrap();
    modules.insert("$edgeHub".into(), json!({"properties.desired.routes.up": "FROM /* INTO $upstream", "properties.desired.routes.bad": {"priority": 1}, "properties.desired.schemaVersion": "1.1"}));
    modules.insert(
        "metricsCollector".into(),
        json!({"properties.desired.upload.interval": 30, "properties.desired": {"a": 1}}),
    );
    let got = messages(validate_manifest("monitoring", true, &c));
    assert_eq!(
        got,
        [
            "deployment \"monitoring\": modulesContent.$edgeAgent['properties.desired.modules.bad.name']: property not allowed here; fix: remove it or correct its name; allowed here: a name matching ^[a-zA-Z0-9_-]+$",
            "deployment \"monitoring\": modulesContent.$edgeAgent['properties.desired.modules.metricsCollector'].settings.image: required property missing; fix: add \"image\" with the module's container image, for example \"mcr.microsoft.com/<repository>:<tag>\"",
            "deployment \"monitoring\": modulesContent.$edgeAgent['properties.desired.runtime.settings.registryCredentials.acr'].address: does not match the pattern ^[^\\s]+$; fix: write a value that matches the pattern",
            "deployment \"monitoring\": modulesContent.$edgeAgent['properties.desired.systemModules.edgeHub']: entry not supported in a layered deployment's $edgeAgent; fix: use \"properties.desired.modules.<name>\" or \"properties.desired.runtime.settings.registryCredentials.<name>\" keys",
            "deployment \"monitoring\": modulesContent.$edgeHub['properties.desired.routes.bad']: is not a route; fix: write the route as a string \"FROM <source> [WHERE <condition>] INTO <sink>\", or as an object {route, priority (0-9), timeToLiveSecs}",
            "deployment \"monitoring\": modulesContent.$edgeHub['properties.desired.schemaVersion']: entry not supported in a layered deployment's $edgeHub; fix: add routes as \"properties.desired.routes.<name>\" entries",
        ]
    );
    assert!(
        got.iter().all(|m| !m.contains("hunter2")),
        "errors never repeat values"
    );
}

#[test]
fn layered_deployments_need_edge_agent_and_cannot_replace_it() {
    assert_eq!(
        validate_manifest("l", true, &json!({"modulesContent": {"$edgeAgent": {}}})),
        Ok(())
    );
    assert_eq!(
        messages(validate_manifest("l", true, &json!({"modulesContent": {}}))),
        [
            "deployment \"l\": modulesContent.$edgeAgent: required property missing; fix: add \"$edgeAgent\": {} (IoT Hub requires the edgeAgent object in every layered deployment, even empty)"
        ]
    );
    let full = tutorial_lower();
    let got = messages(validate_manifest("l", true, &full));
    assert!(got.contains(&"deployment \"l\": modulesContent.$edgeAgent['properties.desired']: a layered deployment cannot replace the whole edgeAgent configuration; fix: add modules as \"properties.desired.modules.<name>\" entries, or make this a standard deployment (layered: false)".to_string()), "{got:#?}");
    assert_eq!(
        messages(validate_manifest(
            "l",
            true,
            &json!({"modulesContent": {"$edgeAgent": [], "$edgeHub": 1, "m": {"properties.desired": 3, "properties.desired.": 1, "properties.desired.$x": 1}, "n-1": {}, "a b": {}}})
        )),
        [
            "deployment \"l\": modulesContent.$edgeAgent: expected an object; fix: write \"$edgeAgent\": {...}",
            "deployment \"l\": modulesContent.$edgeHub: expected an object; fix: write \"$edgeHub\": {...}",
            "deployment \"l\": modulesContent.m['properties.desired']: expected an object; fix: write the module's desired properties as an object",
            "deployment \"l\": modulesContent.m['properties.desired.$x']: property not allowed here; fix: use \"properties.desired\" (replaces the module's desired properties) or \"properties.desired.<section>\" (merges one section)",
            "deployment \"l\": modulesContent.m['properties.desired.']: property not allowed here; fix: use \"properties.desired\" (replaces the module's desired properties) or \"properties.desired.<section>\" (merges one section)",
            "deployment \"l\": modulesContent.n-1: the module twin sets nothing; fix: add \"properties.desired\" or remove the entry",
            "deployment \"l\": modulesContent['a b']: not a module name; fix: module names use letters, digits, '_' and '-' (^[a-zA-Z0-9_-]+$)",
        ]
    );
}

#[test]
fn config_map_text_errors_are_clear_and_do_not_quote_the_text() {
    assert_eq!(
        parse_manifest_text("d", "{\"modulesContent\": {}}").unwrap(),
        json!({"modulesContent": {}})
    );
    let e = parse_manifest_text(
        "lower-layer",
        "{\n  \"modulesContent\": {\"password\": \"s3cret\"",
    )
    .unwrap_err();
    assert_eq!(e.deployment, "lower-layer");
    assert!(
        e.problem
            .starts_with("the ConfigMap text is not valid JSON ("),
        "{e}"
    );
    assert!(e.problem.contains("at line 2, column"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert!(e.fix.contains("{\"modulesContent\": {...}}"));
    let e = parse_manifest_text("d", "").unwrap_err();
    assert_eq!(
        e.to_string(),
        "deployment \"d\": the ConfigMap text is not valid JSON (EOF while parsing a value at line 1, column 0); fix: store the manifest as JSON, {\"modulesContent\": {...}}, under the ConfigMap key the deployment names"
    );
}

fn from_config_map(name: &str, cm: &str, key: &str) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        priority: 10,
        layered: false,
        content: None,
        config_map_ref: Some(ConfigMapKeyRef {
            name: cm.into(),
            key: key.into(),
        }),
        registry_credentials: Vec::new(),
    }
}

#[test]
fn resolve_reads_config_maps_and_reports_every_problem() {
    let mut spec = tutorial().spec;
    let lower_text = tutorial_lower().to_string();
    spec.deployments[1] = from_config_map("lower-layer", "manifests", "lower.json");
    let texts = |cm: &ConfigMapKeyRef| {
        (cm.name == "manifests" && cm.key == "lower.json").then_some(lower_text.as_str())
    };
    let manifests = resolve_manifests(&spec, texts).expect("valid");
    assert_eq!(manifests["lower-layer"].content, tutorial_lower());
    assert_eq!(manifests["lower-layer"].priority, 10);
    assert!(!manifests["lower-layer"].layered);

    spec.deployments
        .push(from_config_map("missing", "manifests", "nope.json"));
    spec.deployments
        .push(from_config_map("broken", "broken", "b.json"));
    let mut both = from_config_map("both", "x", "y");
    both.content = Some(json!({}));
    spec.deployments.push(both);
    let errors = resolve_manifests(&spec, |cm| match cm.name.as_str() {
        "broken" => Some("{not json"),
        "manifests" if cm.key == "lower.json" => Some(lower_text.as_str()),
        _ => None,
    })
    .unwrap_err();
    let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "deployment \"both\": spec.deployments[both]: a deployment needs exactly one of content and configMapRef; fix: keep either the inline content or the configMapRef",
            "deployment \"broken\": configMap \"broken\" key \"b.json\": the ConfigMap text is not valid JSON (key must be a string at line 1, column 2); fix: store the manifest as JSON, {\"modulesContent\": {...}}, under the ConfigMap key the deployment names",
            "deployment \"missing\": configMap \"manifests\" key \"nope.json\": the ConfigMap or its key does not exist; fix: create ConfigMap \"manifests\" in the hierarchy's namespace with key \"nope.json\" holding the manifest JSON, or correct configMapRef",
        ]
    );
}

fn layered(name: &str, priority: i32, module: &str) -> DeploymentSpec {
    let mut agent = serde_json::Map::new();
    agent.insert(
        format!("properties.desired.modules.{module}"),
        json!({"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "mcr.microsoft.com/x:1"}}),
    );
    DeploymentSpec {
        name: name.into(),
        priority,
        layered: true,
        content: Some(json!({"modulesContent": {"$edgeAgent": agent}})),
        config_map_ref: None,
        registry_credentials: Vec::new(),
    }
}

fn with_layers(layers: &[&str]) -> DeviceSpec {
    let mut d = tutorial().spec.devices[0].clone();
    d.layered_deployments = layers.iter().map(|l| l.to_string()).collect();
    d
}

#[test]
fn layered_priorities_must_rank_above_the_base_and_not_tie_on_a_clash() {
    let mut spec = tutorial().spec;
    spec.deployments.push(layered("low", 10, "a"));
    spec.deployments.push(layered("x1", 20, "shared"));
    spec.deployments.push(layered("x2", 20, "shared"));
    spec.deployments.push(layered("y", 20, "other"));
    spec.devices[0] = with_layers(&["low", "x1", "x2", "y"]);
    let got: Vec<String> = resolve_manifests(&spec, |_| None)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "deployment \"low\": spec.deployments[low].priority: priority 10 is not above the priority 10 of base deployment \"top-layer\", which device \"top-layer\" also runs; fix: raise this layered deployment's priority above 10 (IoT Hub applies layered deployments only on top of lower-priority base deployments)",
            "deployment \"x2\": spec.deployments[x2].priority: layered deployments \"x1\" and \"x2\" both set $edgeAgent/properties.desired.modules.shared with the same priority 20 on device \"top-layer\", so which one wins is undefined; fix: give one of them a higher priority, or rename the clashing entries",
        ]
    );
    // Layered deployments need a base.
    let mut no_base = spec.clone();
    no_base.devices[1].deployment = None;
    no_base.devices[1].layered_deployments = vec!["y".into()];
    no_base.devices[0].layered_deployments = vec![];
    let got: Vec<String> = resolve_manifests(&no_base, |_| None)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "deployment \"y\": spec.devices[lower-layer].deployment: device \"lower-layer\" has layered deployments but no base deployment; fix: name the device's base deployment; IoT Hub applies layered deployments only on top of one"
        ]
    );
    // Different priorities, or no shared entry, are fine.
    spec.deployments.retain(|d| d.name != "low");
    spec.deployments
        .iter_mut()
        .find(|d| d.name == "x2")
        .unwrap()
        .priority = 30;
    spec.devices[0] = with_layers(&["x1", "x2", "y"]);
    assert!(resolve_manifests(&spec, |_| None).is_ok());
}

#[test]
fn json_paths_read_like_javascript() {
    let mut p = JsonPath::of(&[
        "modulesContent",
        "$edgeAgent",
        "properties.desired",
        "modules",
        "my-module",
    ]);
    p.push_key("env");
    p.push_key("1st");
    p.push_key("it's");
    p.push_index(3);
    assert_eq!(
        p.to_string(),
        "modulesContent.$edgeAgent['properties.desired'].modules.my-module.env['1st']['it\\'s'][3]"
    );
    assert_eq!(JsonPath::default().to_string(), "");
    assert_eq!(JsonPath::of(&["a.b"]).to_string(), "['a.b']");
    assert_eq!(p.last_key(), None);
    assert_eq!(JsonPath::of(&["a"]).key("b").last_key(), Some("b"));
}

#[test]
fn debug_output_redacts_registry_passwords_and_secret_env() {
    let content = json!({"modulesContent": {"$edgeAgent": {
        "properties.desired": {"runtime": {"settings": {"registryCredentials": {"acr": {"username": "u", "password": "hunter2", "address": "a.azurecr.io"}}}},
            "modules": {"registry": {"env": {"REGISTRY_PROXY_PASSWORD": {"value": "pw-123"}, "REGISTRY_PROXY_REMOTEURL": {"value": "https://mcr.microsoft.com"}}}}},
        "properties.desired.runtime.settings.registryCredentials.b": {"username": "u", "password": "hunter3", "address": "b"}
    }}});
    let r = redacted(&content);
    assert_eq!(r.pointer("/modulesContent/$edgeAgent/properties.desired/runtime/settings/registryCredentials/acr/password"), Some(&json!("<redacted>")));
    assert_eq!(r.pointer("/modulesContent/$edgeAgent/properties.desired/modules/registry/env/REGISTRY_PROXY_PASSWORD/value"), Some(&json!("<redacted>")));
    assert_eq!(r.pointer("/modulesContent/$edgeAgent/properties.desired/modules/registry/env/REGISTRY_PROXY_REMOTEURL/value"), Some(&json!("https://mcr.microsoft.com")));
    let m = Manifest {
        name: "d".into(),
        priority: 1,
        layered: false,
        content,
    };
    let debug = format!("{m:?}");
    for secret in ["hunter2", "hunter3", "pw-123"] {
        assert!(!debug.contains(secret), "{debug}");
    }
    assert!(debug.contains("a.azurecr.io"));
}

#[test]
fn twin_property_names_iot_hub_refuses_are_errors_naming_the_path() {
    for bad in ["a.b", "has space", "tag#1", "$version", "tab\tkey"] {
        let mut c = tutorial_lower();
        c["modulesContent"]["SimulatedTemperatureSensor"] =
            json!({"properties.desired": {"SendData": true, "nested": {bad: 1}}});
        let errors = messages(validate_manifest("lower-layer", false, &c));
        assert_eq!(errors.len(), 1, "{bad:?}: {errors:?}");
        assert!(
            errors[0].contains("IoT Hub refuses this twin property name")
                && errors[0].contains("SimulatedTemperatureSensor")
                && errors[0].contains("nested")
                && errors[0].contains("lower-layer"),
            "{errors:?}"
        );
    }
    // Keys of the content itself (`properties.desired`, layered sections) are not twin names.
    assert_eq!(validate_manifest("monitoring", true, &monitoring()), Ok(()));
}

#[test]
fn more_than_fifty_modules_in_one_deployment_is_an_error() {
    let mut c = tutorial_lower();
    let sensor = c[ "modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
        ["SimulatedTemperatureSensor"]
        .clone();
    let modules = c["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
        .as_object_mut()
        .unwrap();
    for i in modules.len()..MAX_MODULES_PER_DEPLOYMENT {
        modules.insert(format!("m{i}"), sensor.clone());
    }
    assert_eq!(
        validate_manifest("lower-layer", false, &c),
        Ok(()),
        "fifty fit"
    );
    c["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["one-more"] = sensor;
    let errors = messages(validate_manifest("lower-layer", false, &c));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("51 modules, more than the 50"),
        "{errors:?}"
    );
}
