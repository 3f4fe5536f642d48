//! Deployments (issue 6) with the operator as its own process: configurations per deployment
//! and layer, roll-out of a changed deployment, layered modules and priorities on the targeted
//! devices only, deployment drift under Manage and Observe, schema errors, the gateway check,
//! and PerDevice mode.

mod common;

use anyhow::{Context as _, ensure};
use common::{Env, configurations, example};
use e2e_harness::Checks;
use serde_json::{Value, json};

async fn agent_desired(env: &Env, device: &str) -> anyhow::Result<Value> {
    let twin = env
        .hub
        .admin
        .get_json(&format!("twins/{device}/modules/%24edgeAgent"))
        .await?;
    twin.pointer("/properties/desired")
        .cloned()
        .context("no desired properties")
}

fn module_image(desired: &Value, module: &str) -> Option<String> {
    desired
        .pointer(&format!("/modules/{module}/settings/image"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn uid(env: &Env, namespace: &str, name: &str) -> anyhow::Result<String> {
    Ok(env
        .hierarchies(namespace)
        .get(name)
        .await?
        .metadata
        .uid
        .unwrap_or_default())
}

async fn tutorial_configurations_per_layer(env: &Env) -> anyhow::Result<()> {
    env.namespace("tut").await?;
    env.apply("tut", &example("tutorial.yaml")).await?;
    env.wait_condition("tut", "tutorial", "Ready", "True")
        .await?;
    let uid = uid(env, "tut", "tutorial").await?;
    let configs = common::wait_for(env, "two configurations for the tutorial", || async {
        let c = configurations(env, &uid).await.ok()?;
        (c.len() == 2).then_some(c)
    })
    .await?;
    for (id, c) in &configs {
        ensure!(
            id.starts_with("tutorial-top-layer-") || id.starts_with("tutorial-lower-layer-"),
            "unexpected id {id}"
        );
        ensure!(
            c["targetCondition"]
                .as_str()
                .is_some_and(|t| t.contains(&uid)),
            "{id}: {}",
            c["targetCondition"]
        );
    }
    // The emulator applies them to the devices' $edgeAgent twins: the lower layer pulls through
    // $upstream, the top layer from mcr.
    let top = common::wait_for(env, "top-layer's $edgeAgent desired properties", || async {
        let d = agent_desired(env, "top-layer").await.ok()?;
        module_image(&d, "IoTEdgeAPIProxy").map(|_| d)
    })
    .await?;
    ensure!(
        module_image(&top, "IoTEdgeAPIProxy").as_deref()
            == Some("mcr.microsoft.com/azureiotedge-api-proxy:1.1"),
        "{top}"
    );
    // Each layer's configuration is applied at the hub's next evaluation after it exists.
    let lower = common::wait_for(
        env,
        "lower-layer's $edgeAgent desired properties",
        || async {
            let d = agent_desired(env, "lower-layer").await.ok()?;
            module_image(&d, "SimulatedTemperatureSensor").map(|_| d)
        },
    )
    .await?;
    ensure!(
        module_image(&lower, "SimulatedTemperatureSensor").as_deref()
            == Some("$upstream:443/azureiotedge-simulated-temperature-sensor:1.5"),
        "lower-layer sensor image: {lower}"
    );
    ensure!(
        lower
            .pointer("/systemModules/edgeHub/settings/image")
            .and_then(Value::as_str)
            == Some("$upstream:443/azureiotedge-hub:1.5"),
        "{lower}"
    );
    ensure!(
        module_image(&lower, "IoTEdgeAPIProxy").is_none(),
        "lower-layer got the top layer's modules"
    );
    let h = env
        .wait_condition("tut", "tutorial", "DeploymentsReady", "True")
        .await;
    // Without running devices nothing reports "applied" yet; what must hold is that the gateway
    // check finds the top layer's API proxy (no warning naming it).
    if let Err(e) = h {
        let status = env.status("tut", "tutorial").await?;
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "DeploymentsReady")
            .context("DeploymentsReady")?;
        ensure!(
            !c.message.contains("API proxy"),
            "gateway warning on the tutorial: {} ({e})",
            c.message
        );
    }
    Ok(())
}

async fn changed_deployment_rolls_out(env: &Env) -> anyhow::Result<()> {
    let uid = uid(env, "tut", "tutorial").await?;
    let before = configurations(env, &uid).await?;
    let changed = example("tutorial.yaml").replace(
        "azureiotedge-simulated-temperature-sensor:1.5",
        "azureiotedge-simulated-temperature-sensor:1.4",
    );
    env.apply("tut", &changed).await?;
    let after = common::wait_for(
        env,
        "the lower-layer configuration to be replaced",
        || async {
            let c = configurations(env, &uid).await.ok()?;
            let lower_ids: Vec<&String> = c
                .keys()
                .filter(|id| id.starts_with("tutorial-lower-layer-"))
                .collect();
            (lower_ids.len() == 1 && !before.contains_key(lower_ids[0])).then_some(c)
        },
    )
    .await?;
    ensure!(
        after.len() == 2,
        "old configuration not deleted: {:?}",
        after.keys()
    );
    let top_kept = before
        .keys()
        .find(|id| id.starts_with("tutorial-top-layer-"))
        .context("top config")?;
    ensure!(
        after.contains_key(top_kept),
        "the unchanged top-layer configuration was replaced"
    );
    let lower = common::wait_for(env, "lower-layer to get the new image", || async {
        let d = agent_desired(env, "lower-layer").await.ok()?;
        (module_image(&d, "SimulatedTemperatureSensor")?.ends_with(":1.4")).then_some(d)
    })
    .await?;
    ensure!(
        module_image(&lower, "SimulatedTemperatureSensor")
            .unwrap()
            .starts_with("$upstream:443/"),
        "{lower}"
    );
    env.wait_event(
        "tut",
        "tutorial",
        "DeploymentDeleted",
        "tutorial-lower-layer-",
    )
    .await?;
    Ok(())
}

async fn layered_modules_reach_targeted_devices_only(env: &Env) -> anyhow::Result<()> {
    env.namespace("fac").await?;
    env.apply("fac", &example("factory.yaml")).await?;
    env.wait_condition("fac", "factory", "Ready", "True")
        .await?;
    let h = env.hierarchies("fac").get("factory").await?;
    let with_monitoring: Vec<String> = h
        .spec
        .devices
        .iter()
        .filter(|d| d.layered_deployments.iter().any(|l| l == "monitoring"))
        .map(|d| d.id.clone())
        .collect();
    let without: Vec<String> = h
        .spec
        .devices
        .iter()
        .filter(|d| d.deployment.is_some() && d.layered_deployments.is_empty())
        .map(|d| d.id.clone())
        .collect();
    ensure!(!with_monitoring.is_empty() && !without.is_empty());
    for id in &with_monitoring {
        let desired = common::wait_for(
            env,
            &format!("{id} to get the layered metricsCollector"),
            || async {
                let d = agent_desired(env, id).await.ok()?;
                module_image(&d, "metricsCollector").map(|_| d)
            },
        )
        .await?;
        // The base deployment is still there underneath (layered on top, not instead).
        ensure!(
            desired.pointer("/systemModules/edgeHub").is_some(),
            "{id}: base deployment lost: {desired}"
        );
        let image = module_image(&desired, "metricsCollector").unwrap();
        let layer = h
            .status
            .as_ref()
            .and_then(|s| s.devices.iter().find(|d| &d.id == id))
            .and_then(|d| d.layer)
            .unwrap_or(1);
        ensure!(
            (layer > 1) == image.starts_with("$upstream:443/"),
            "{id} (layer {layer}): {image}"
        );
    }
    for id in &without {
        let d = agent_desired(env, id).await?;
        ensure!(
            module_image(&d, "metricsCollector").is_none(),
            "{id} got the layered module without asking for it"
        );
    }
    // Priority: the layered deployment (20) ranks above its bases (10) in the hub.
    let uid = h.metadata.uid.clone().unwrap_or_default();
    let configs = configurations(env, &uid).await?;
    for (id, c) in &configs {
        let expected = if id.starts_with("factory-monitoring-") {
            20
        } else {
            10
        };
        ensure!(
            c["priority"] == json!(expected),
            "{id}: priority {}",
            c["priority"]
        );
    }
    Ok(())
}

async fn deployment_drift_manage_and_observe(env: &Env) -> anyhow::Result<()> {
    let uid = uid(env, "tut", "tutorial").await?;
    let configs = configurations(env, &uid).await?;
    let lower = configs
        .keys()
        .find(|id| id.starts_with("tutorial-lower-layer-"))
        .context("lower config")?
        .clone();
    let top = configs
        .keys()
        .find(|id| id.starts_with("tutorial-top-layer-"))
        .context("top config")?
        .clone();

    // Manage: a deleted configuration is re-created, an edited priority restored.
    env.hub
        .admin
        .delete_json(&format!("configurations/{lower}"))
        .await?;
    let mut edited = configs[&top].clone();
    edited["priority"] = json!(99);
    env.hub
        .admin
        .put_json(&format!("configurations/{top}"), &edited, Some("*"))
        .await?;
    env.poke("tut", "tutorial").await?;
    common::wait_for(env, "both configurations restored", || async {
        let c = configurations(env, &uid).await.ok()?;
        (c.contains_key(&lower) && c.get(&top)?["priority"] == json!(10)).then_some(())
    })
    .await?;
    env.wait_event("tut", "tutorial", "DriftCorrected", &lower)
        .await?;
    env.wait_event("tut", "tutorial", "DriftCorrected", &top)
        .await?;

    // Observe: the same edits are reported and left in place.
    let observe = example("tutorial.yaml")
        .replace(
            "  devices:\n",
            "  policy: {reconcile: Observe}\n  devices:\n",
        )
        .replace(
            "azureiotedge-simulated-temperature-sensor:1.5",
            "azureiotedge-simulated-temperature-sensor:1.4",
        );
    env.apply("tut", &observe).await?;
    env.wait_condition("tut", "tutorial", "Ready", "True")
        .await?;
    env.hub
        .admin
        .delete_json(&format!("configurations/{lower}"))
        .await?;
    env.poke("tut", "tutorial").await?;
    env.wait_status(
        "tut",
        "tutorial",
        "configuration drift reported under Observe",
        |s| {
            s.conditions.iter().any(|c| {
                c.type_ == "DriftDetected"
                    && c.status == "True"
                    && c.message.contains(&lower)
                    && c.message.contains("Observe")
            })
        },
    )
    .await?;
    ensure!(
        !configurations(env, &uid).await?.contains_key(&lower),
        "Observe re-created the configuration"
    );
    env.wait_event("tut", "tutorial", "DriftDetected", &lower)
        .await?;
    Ok(())
}

async fn schema_errors_stall_with_path(env: &Env) -> anyhow::Result<()> {
    env.namespace("schema").await?;
    let broken = example("tutorial.yaml").replace(
        "settings: {image: \"mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.5\", createOptions: \"\"}",
        "settings: {createOptions: \"\"}",
    );
    ensure!(
        broken != example("tutorial.yaml"),
        "fixture edit did not apply"
    );
    let writes = common::stat(&env.hub.admin.stats().await?, "writeCalls");
    env.apply(
        "schema",
        &broken
            .replace("name: tutorial", "name: broken")
            .replace("id: top-layer", "id: s-top")
            .replace("parent: top-layer", "parent: s-top")
            .replace("id: lower-layer", "id: s-low"),
    )
    .await?;
    let h = env
        .wait_condition("schema", "broken", "Stalled", "True")
        .await?;
    let stalled = common::condition(&h, "Stalled")?;
    ensure!(stalled.reason == "InvalidSpec", "{stalled:?}");
    ensure!(
        stalled.message.contains("deployment \"lower-layer\"")
            && stalled.message.contains("SimulatedTemperatureSensor")
            && stalled.message.contains("image"),
        "{}",
        stalled.message
    );
    ensure!(
        common::stat(&env.hub.admin.stats().await?, "writeCalls") == writes,
        "an invalid manifest caused hub writes"
    );
    Ok(())
}

async fn gateway_check_warns_without_api_proxy(env: &Env) -> anyhow::Result<()> {
    env.namespace("gw").await?;
    let yaml = example("tutorial.yaml")
        .replace("name: tutorial", "name: noproxy")
        .replace("id: top-layer", "id: g-top")
        .replace("parent: top-layer", "parent: g-top")
        .replace("id: lower-layer", "id: g-low");
    env.apply("gw", &common::without_api_proxy(&yaml)?).await?;
    let h = env
        .wait_condition("gw", "noproxy", "DeploymentsReady", "False")
        .await?;
    let c = common::condition(&h, "DeploymentsReady")?;
    ensure!(
        c.message.contains("g-top") && c.message.contains("API proxy"),
        "{}",
        c.message
    );
    // Restored: the warning goes.
    env.apply("gw", &yaml).await?;
    env.wait_status("gw", "noproxy", "the gateway warning to clear", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "DeploymentsReady" && !c.message.contains("API proxy"))
    })
    .await?;
    Ok(())
}

async fn per_device_mode_applies_manifests(env: &Env) -> anyhow::Result<()> {
    env.namespace("perdev").await?;
    let yaml = example("tutorial.yaml")
        .replace("name: tutorial", "name: perdevice")
        .replace("  devices:\n", "  deploymentMode: PerDevice\n  devices:\n")
        .replace("id: top-layer", "id: p-top")
        .replace("parent: top-layer", "parent: p-top")
        .replace("id: lower-layer", "id: p-low");
    env.apply("perdev", &yaml).await?;
    env.wait_condition("perdev", "perdevice", "Ready", "True")
        .await?;
    let lower = common::wait_for(env, "p-low's manifest applied", || async {
        let d = agent_desired(env, "p-low").await.ok()?;
        module_image(&d, "SimulatedTemperatureSensor").map(|_| d)
    })
    .await?;
    ensure!(
        module_image(&lower, "SimulatedTemperatureSensor")
            .unwrap()
            .starts_with("$upstream:443/"),
        "{lower}"
    );
    let uid = uid(env, "perdev", "perdevice").await?;
    ensure!(
        configurations(env, &uid).await?.is_empty(),
        "PerDevice mode created configurations"
    );
    // A manifest replaced by hand is re-applied.
    env.hub.admin.post_json("devices/p-low/applyConfigurationContent", &json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "runtime": {"type": "docker", "settings": {}}, "systemModules": {}, "modules": {}}}}})).await?;
    common::wait_query_shows(
        env,
        "SELECT * FROM devices.modules WHERE deviceId = 'p-low' AND moduleId = '$edgeAgent'",
        // The hand-made manifest's empty systemModules: before the operator's own apply shows,
        // the query has no systemModules at all.
        |twin| twin.pointer("/properties/desired/systemModules") == Some(&json!({})),
    )
    .await?;
    env.poke("perdev", "perdevice").await?;
    common::wait_for(env, "p-low's manifest re-applied", || async {
        let d = agent_desired(env, "p-low").await.ok()?;
        module_image(&d, "SimulatedTemperatureSensor").map(|_| ())
    })
    .await?;
    env.wait_event("perdev", "perdevice", "DriftCorrected", "p-low")
        .await?;
    Ok(())
}

async fn deleting_the_hierarchy_removes_its_configurations(env: &Env) -> anyhow::Result<()> {
    let uid = uid(env, "fac", "factory").await?;
    ensure!(
        !configurations(env, &uid).await?.is_empty(),
        "the factory has no configurations to remove"
    );
    env.hierarchies("fac")
        .delete("factory", &Default::default())
        .await?;
    common::wait_until_gone(env, "fac", "factory").await?;
    let left = configurations(env, &uid).await?;
    ensure!(
        left.is_empty(),
        "configurations left after deletion: {:?}",
        left.keys()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_manages_deployments() -> anyhow::Result<()> {
    let env = Env::start(&["--strict"]).await?;
    let mut checks = Checks::new();
    if checks
        .run(
            "tutorial: one configuration per deployment and layer",
            tutorial_configurations_per_layer(&env),
        )
        .await
    {
        checks
            .run(
                "a changed deployment rolls out as a new configuration",
                changed_deployment_rolls_out(&env),
            )
            .await;
        checks
            .run(
                "deployment drift under Manage and Observe",
                deployment_drift_manage_and_observe(&env),
            )
            .await;
    }
    if checks
        .run(
            "layered modules reach targeted devices only, priorities hold",
            layered_modules_reach_targeted_devices_only(&env),
        )
        .await
    {
        checks
            .run(
                "deleting the hierarchy removes its configurations",
                deleting_the_hierarchy_removes_its_configurations(&env),
            )
            .await;
    }
    checks
        .run(
            "a manifest failing the schema stalls with the JSON path",
            schema_errors_stall_with_path(&env),
        )
        .await;
    checks
        .run(
            "the gateway check warns without an API proxy",
            gateway_check_warns_without_api_proxy(&env),
        )
        .await;
    checks
        .run(
            "PerDevice mode applies and re-applies manifests",
            per_device_mode_applies_manifests(&env),
        )
        .await;
    checks.finish()
}
