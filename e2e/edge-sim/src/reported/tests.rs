use super::*;

fn lower_layer_desired() -> Value {
    json!({
        "schemaVersion": "1.1",
        "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25", "registryCredentials": {"acr": {"username": "u", "password": "PASSWORD", "address": "a"}}}},
        "systemModules": {
            "edgeAgent": {"type": "docker", "settings": {"image": "$upstream:443/azureiotedge-agent:1.5", "createOptions": ""}},
            "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "$upstream:443/azureiotedge-hub:1.5", "createOptions": "{}"}}
        },
        "modules": {
            "SimulatedTemperatureSensor": {"version": "1.0", "type": "docker", "status": "running", "restartPolicy": "always",
                "settings": {"image": "$upstream:443/azureiotedge-simulated-temperature-sensor:1.5", "createOptions": ""},
                "env": {"SECRET_ENV": {"value": "PASSWORD"}, "PORT": {"value": 443}}}
        },
        "$version": 7
    })
}

#[test]
fn desired_deployment_is_read() {
    let d = parse_agent_desired(&lower_layer_desired()).unwrap();
    assert_eq!(d.edge_hub.spec.image, "$upstream:443/azureiotedge-hub:1.5");
    let sensor = &d.modules["SimulatedTemperatureSensor"].spec;
    assert!(sensor.wants_running);
    assert_eq!(sensor.env["PORT"], "443");
}

#[test]
fn invalid_desired_properties_get_the_agents_codes() {
    let mut no_hub = lower_layer_desired();
    no_hub["systemModules"]
        .as_object_mut()
        .unwrap()
        .remove("edgeHub");
    let mut no_image = lower_layer_desired();
    no_image["modules"]["SimulatedTemperatureSensor"]["settings"] = json!({});
    let mut bad_status = lower_layer_desired();
    bad_status["modules"]["SimulatedTemperatureSensor"]["status"] = json!("paused");
    let mut bad_modules = lower_layer_desired();
    bad_modules["modules"] = json!([1]);
    let cases = [
        (json!(null), 417, "empty"),
        (json!({"$version": 1}), 417, "no deployment applies"),
        (
            json!({"schemaVersion": "9.9", "$version": 1}),
            412,
            "schemaVersion \"9.9\" is not supported",
        ),
        (json!({"modules": {}, "$version": 1}), 412, "(missing)"),
        (
            json!({"schemaVersion": "1.1"}),
            400,
            "systemModules is missing",
        ),
        (no_hub, 400, "systemModules.edgeHub is missing"),
        (
            no_image,
            400,
            "modules.SimulatedTemperatureSensor: settings.image is missing",
        ),
        (bad_status, 400, "status \"paused\""),
        (bad_modules, 400, "modules must be an object"),
    ];
    for (desired, code, text) in cases {
        let status = parse_agent_desired(&desired).unwrap_err();
        assert_eq!(status.code, code, "{desired}");
        assert!(status.description.contains(text), "{}", status.description);
    }
}

#[test]
fn edge_hub_desired_status_codes() {
    assert_eq!(
        edge_hub_desired_status(&json!({"schemaVersion": "1.1", "routes": {}})).code,
        200
    );
    assert_eq!(
        edge_hub_desired_status(&json!({"schemaVersion": "1.1"})).description,
        "routes is missing"
    );
    assert_eq!(edge_hub_desired_status(&json!({})).code, 400);
}

#[test]
fn records_move_only_on_transitions() {
    let running = advance(None, &ModuleOutcome::Running, "t1");
    assert_eq!(running.runtime_status, "running");
    assert_eq!(running.last_start_time_utc.as_deref(), Some("t1"));
    assert_eq!(
        advance(Some(&running), &ModuleOutcome::Running, "t2"),
        running
    );

    let backoff = advance(
        Some(&running),
        &ModuleOutcome::Backoff("no proxy".into()),
        "t3",
    );
    assert_eq!(backoff.runtime_status, "backoff");
    assert_eq!(backoff.status_description, "no proxy");
    assert_eq!(backoff.restart_count, 1);
    assert_eq!(backoff.exit_code, 1);
    assert_eq!(backoff.last_exit_time_utc.as_deref(), Some("t3"));
    assert_eq!(
        advance(
            Some(&backoff),
            &ModuleOutcome::Backoff("no proxy".into()),
            "t4"
        ),
        backoff
    );
    let other_reason = advance(
        Some(&backoff),
        &ModuleOutcome::Backoff("link down".into()),
        "t5",
    );
    assert_eq!(
        other_reason.restart_count, 1,
        "a new reason is not a new failure"
    );
    assert_eq!(other_reason.status_description, "link down");

    let again = advance(Some(&other_reason), &ModuleOutcome::Running, "t6");
    assert_eq!(again.last_start_time_utc.as_deref(), Some("t6"));
    assert_eq!(again.exit_code, 0);
    let stopped = advance(Some(&again), &ModuleOutcome::Stopped, "t7");
    assert_eq!(stopped.runtime_status, "stopped");
    assert_eq!(stopped.last_exit_time_utc.as_deref(), Some("t7"));
    assert_eq!(
        advance(Some(&stopped), &ModuleOutcome::Stopped, "t8"),
        stopped
    );
}

#[test]
fn agent_report_has_the_schema_and_hides_secrets() {
    let deployment = parse_agent_desired(&lower_layer_desired()).unwrap();
    let agent = advance(None, &ModuleOutcome::Running, "t0");
    let hub = advance(None, &ModuleOutcome::Running, "t0");
    let mut modules = BTreeMap::new();
    modules.insert(
        "SimulatedTemperatureSensor".to_string(),
        advance(
            None,
            &ModuleOutcome::Backoff("image pull from $upstream:443 failed".into()),
            "t0",
        ),
    );
    let status = DesiredStatus::ok();
    let doc = agent_reported(&AgentReport {
        status: &status,
        desired_version: Some(7),
        deployment: Some(&deployment),
        agent: &agent,
        bootstrap_image: "ignored",
        edge_hub: Some(&hub),
        modules: &modules,
        parent_hostname: None,
    });
    assert_eq!(doc["lastDesiredVersion"], 7);
    assert_eq!(doc["lastDesiredStatus"]["code"], 200);
    assert_eq!(doc["schemaVersion"], "1.1");
    assert_eq!(doc["runtime"]["type"], "docker");
    assert_eq!(
        doc["systemModules"]["edgeAgent"]["runtimeStatus"],
        "running"
    );
    assert_eq!(
        doc["systemModules"]["edgeAgent"]["settings"]["image"],
        "$upstream:443/azureiotedge-agent:1.5"
    );
    assert_eq!(doc["systemModules"]["edgeHub"]["status"], "running");
    let sensor = &doc["modules"]["SimulatedTemperatureSensor"];
    assert_eq!(sensor["runtimeStatus"], "backoff");
    assert_eq!(
        sensor["statusDescription"],
        "image pull from $upstream:443 failed"
    );
    assert_eq!(sensor["restartCount"], 1);
    assert_eq!(
        sensor["settings"]["image"],
        "$upstream:443/azureiotedge-simulated-temperature-sensor:1.5"
    );
    let text = doc.to_string();
    assert!(!text.contains("PASSWORD"), "{text}");
    // No key a twin refuses.
    fn keys_ok(v: &Value) -> bool {
        match v {
            Value::Object(m) => m
                .iter()
                .all(|(k, v)| !k.contains(['.', '$', ' ']) && keys_ok(v)),
            _ => true,
        }
    }
    assert!(keys_ok(&doc));
}

#[test]
fn agent_report_without_deployment() {
    let agent = ModuleRecord {
        runtime_status: "failed".into(),
        status_description: "check edge-ca-chain failed".into(),
        exit_code: 1,
        last_start_time_utc: None,
        last_exit_time_utc: None,
        restart_count: 0,
        last_restart_time_utc: None,
    };
    let status = DesiredStatus {
        code: 500,
        description: "not running".into(),
    };
    let doc = agent_reported(&AgentReport {
        status: &status,
        desired_version: None,
        deployment: None,
        agent: &agent,
        bootstrap_image: "mcr.microsoft.com/azureiotedge-agent:1.5",
        edge_hub: None,
        modules: &BTreeMap::new(),
        parent_hostname: None,
    });
    assert_eq!(doc["lastDesiredStatus"]["code"], 500);
    assert!(doc.get("lastDesiredVersion").is_none());
    assert_eq!(doc["systemModules"]["edgeAgent"]["runtimeStatus"], "failed");
    assert_eq!(
        doc["systemModules"]["edgeAgent"]["settings"]["image"],
        "mcr.microsoft.com/azureiotedge-agent:1.5"
    );
    assert!(doc["systemModules"].get("edgeHub").is_none());
}

#[test]
fn edge_hub_report_lists_clients() {
    let mut clients = BTreeMap::new();
    clients.insert(
        "lower-layer".to_string(),
        ClientRecord {
            status: "connected".into(),
            last_connected_time_utc: "t".into(),
            last_disconnect_time_utc: None,
        },
    );
    let doc = edge_hub_reported(&DesiredStatus::ok(), Some(3), &clients);
    assert_eq!(doc["clients"]["lower-layer"]["status"], "connected");
    assert_eq!(doc["lastDesiredVersion"], 3);
    assert_eq!(doc["lastDesiredStatus"]["code"], 200);
}

#[test]
fn merge_patches() {
    let current = json!({"a": 1, "b": {"c": 2, "d": 3}, "gone": true});
    let target = json!({"a": 1, "b": {"c": 2, "d": 4, "e": [1]}, "new": "x"});
    let patch = merge_patch(&current, &target).unwrap();
    assert_eq!(
        patch,
        json!({"b": {"d": 4, "e": [1]}, "new": "x", "gone": null})
    );
    assert_eq!(merge_patch(&target, &target), None);
    assert_eq!(
        merge_patch(&json!(null), &json!({"a": 1})),
        Some(json!({"a": 1}))
    );
    assert_eq!(
        merge_patch(&json!({"a": {"b": 1}}), &json!({"a": 2})),
        Some(json!({"a": 2}))
    );
}

#[test]
fn strip_metadata_removes_hub_bookkeeping() {
    let reported = json!({"$version": 4, "$metadata": {}, "a": {"$lastUpdated": "x", "b": 1}});
    assert_eq!(strip_metadata(&reported), json!({"a": {"b": 1}}));
}

#[test]
fn twin_time_has_seven_fraction_digits() {
    let t = jiff::Timestamp::new(1_623_457_666, 383_870_400).unwrap();
    assert_eq!(twin_time(t), "2021-06-12T00:27:46.3838704");
}

#[test]
fn images_are_reported_as_the_agent_resolved_them() {
    assert_eq!(
        resolved_image("$upstream:443/azureiotedge-agent:1.5", Some("top.edge.sim")),
        "top.edge.sim:443/azureiotedge-agent:1.5"
    );
    assert_eq!(
        resolved_image("$upstream:443/app", Some("top.edge.sim")),
        "top.edge.sim:443/app:latest"
    );
    assert_eq!(resolved_image("registry", None), "registry:latest");
    assert_eq!(
        resolved_image("mcr.microsoft.com/x@sha256:ab", None),
        "mcr.microsoft.com/x@sha256:ab"
    );
    assert_eq!(
        resolved_image(
            "mcr.microsoft.com/azureiotedge-hub:1.5",
            Some("top.edge.sim")
        ),
        "mcr.microsoft.com/azureiotedge-hub:1.5"
    );
}
