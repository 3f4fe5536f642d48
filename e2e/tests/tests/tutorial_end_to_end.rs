//! The tutorial's outcome reproduced end to end (issue 6): the operator, the emulator and
//! simulated IoT Edge runtimes (e2e/edge-sim) that install the operator's bundles, link child to
//! parent over TLS and pull images by the chain rule. The lower layer runs the Simulated
//! Temperature Sensor pulled through the top layer's API proxy and its telemetry reaches the hub
//! through its parent; without the proxy its modules back off and the status says so.

mod common;

use anyhow::{Context as _, ensure};
use common::Env;
use common::sim::{fast, sim_log, start_sim};
use e2e_harness::Checks;
use e2e_harness::process::ManagedChild;
use serde_json::Value;

async fn agent_reported(env: &Env, device: &str) -> anyhow::Result<Value> {
    let twin = env
        .hub
        .admin
        .get_json(&format!("twins/{device}/modules/%24edgeAgent"))
        .await?;
    Ok(twin
        .pointer("/properties/reported")
        .cloned()
        .unwrap_or(Value::Null))
}

fn runtime_status(reported: &Value, section: &str, module: &str) -> Option<String> {
    reported
        .pointer(&format!("/{section}/{module}/runtimeStatus"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn tutorial_runs_through_the_parent(env: &Env) -> anyhow::Result<()> {
    env.wait_condition("iot", "tutorial", "Ready", "True")
        .await?;
    env.wait_condition("iot", "tutorial", "ModulesHealthy", "True")
        .await
        .with_context(|| sim_log(env, "iot"))?;
    let top = agent_reported(env, "top-layer").await?;
    for (section, module) in [
        ("systemModules", "edgeAgent"),
        ("systemModules", "edgeHub"),
        ("modules", "registry"),
        ("modules", "IoTEdgeAPIProxy"),
    ] {
        ensure!(
            runtime_status(&top, section, module).as_deref() == Some("running"),
            "top-layer {module}: {top}"
        );
    }
    let lower = agent_reported(env, "lower-layer").await?;
    for (section, module) in [
        ("systemModules", "edgeAgent"),
        ("systemModules", "edgeHub"),
        ("modules", "SimulatedTemperatureSensor"),
    ] {
        ensure!(
            runtime_status(&lower, section, module).as_deref() == Some("running"),
            "lower-layer {module}: {lower}"
        );
    }
    let image = lower
        .pointer("/modules/SimulatedTemperatureSensor/settings/image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // The agent reports the image it resolved: `$upstream` became the parent's hostname.
    let host = image.split('/').next().unwrap_or_default();
    ensure!(
        host.ends_with(":443")
            && host.contains("top-layer")
            && image.ends_with("/azureiotedge-simulated-temperature-sensor:1.5"),
        "lower-layer pulled {image:?}, not through the parent's $upstream:443"
    );
    let status = env.status("iot", "tutorial").await?;
    let summary = status.summary.context("summary")?;
    ensure!(summary.healthy == 2, "summary: {summary:?}");
    // Telemetry from the lower layer reached the hub (relayed by top-layer).
    let stats = common::wait_for(env, "telemetry from lower-layer in the hub", || async {
        let stats = env.hub.admin.stats().await.ok()?;
        let by_sender = stats.pointer("/telemetry/bySender")?.as_object()?.clone();
        let from_lower: u64 = by_sender
            .iter()
            .filter(|(k, _)| k.starts_with("lower-layer"))
            .filter_map(|(_, v)| v.as_u64())
            .sum();
        (from_lower >= 2).then_some(stats)
    })
    .await?;
    eprintln!("telemetry: {}", stats["telemetry"]);
    Ok(())
}

async fn no_proxy_backs_off_and_recovers(env: &Env) -> anyhow::Result<()> {
    let yaml = fast("tutorial.yaml");
    env.apply("iot", &common::without_api_proxy(&yaml)?).await?;
    let h = env
        .wait_condition("iot", "tutorial", "ModulesHealthy", "False")
        .await
        .with_context(|| sim_log(env, "iot"))?;
    let unhealthy = common::condition(&h, "ModulesHealthy")?;
    let status = h.status.unwrap();
    ensure!(
        unhealthy.message.contains("lower-layer")
            && unhealthy.message.contains("SimulatedTemperatureSensor"),
        "{}",
        unhealthy.message
    );
    let lower = status
        .devices
        .iter()
        .find(|d| d.id == "lower-layer")
        .context("lower-layer status")?;
    let failing = lower
        .modules
        .as_ref()
        .map(|m| m.failing.join("; "))
        .unwrap_or_default();
    ensure!(
        failing.contains("backoff") && failing.contains("API proxy"),
        "lower-layer failing modules: {failing}"
    );
    let gateway = env
        .wait_condition("iot", "tutorial", "DeploymentsReady", "False")
        .await?;
    let warning = common::condition(&gateway, "DeploymentsReady")?;
    ensure!(
        warning.message.contains("top-layer") && warning.message.contains("API proxy"),
        "{}",
        warning.message
    );

    env.apply("iot", &yaml).await?;
    env.wait_condition("iot", "tutorial", "ModulesHealthy", "True")
        .await
        .with_context(|| sim_log(env, "iot"))?;
    Ok(())
}

async fn factory_pulls_through_five_layers(env: &Env) -> anyhow::Result<ManagedChild> {
    env.namespace("plant").await?;
    env.apply("plant", &fast("factory.yaml")).await?;
    env.wait_condition("plant", "factory", "Ready", "True")
        .await?;
    let sim = start_sim(env, "plant", "factory")?;
    env.wait_condition("plant", "factory", "ModulesHealthy", "True")
        .await
        .with_context(|| sim_log(env, "plant"))?;
    let h = env.hierarchies("plant").get("factory").await?;
    let edge: Vec<&str> = h
        .spec
        .devices
        .iter()
        .filter(|d| d.deployment.is_some())
        .map(|d| d.id.as_str())
        .collect();
    let status = h.status.unwrap();
    ensure!(
        status
            .summary
            .as_ref()
            .is_some_and(|s| s.healthy as usize == edge.len()),
        "{:?}",
        status.summary
    );
    for cell in edge.iter().filter(|id| id.ends_with("-cell1")) {
        let reported = agent_reported(env, cell).await?;
        ensure!(
            runtime_status(&reported, "modules", "SimulatedTemperatureSensor").as_deref()
                == Some("running"),
            "{cell}: {reported}"
        );
    }
    Ok(sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_end_to_end_with_simulated_devices() -> anyhow::Result<()> {
    let env = Env::start(&["--strict"]).await?;
    env.namespace("iot").await?;
    env.apply("iot", &fast("tutorial.yaml")).await?;
    env.wait_condition("iot", "tutorial", "Ready", "True")
        .await?;
    let _sim = start_sim(&env, "iot", "tutorial")?;
    let mut checks = Checks::new();
    if checks
        .run(
            "the tutorial's modules run, pulled and relayed through the parent",
            tutorial_runs_through_the_parent(&env),
        )
        .await
    {
        checks
            .run(
                "without the API proxy the lower layer backs off, then recovers",
                no_proxy_backs_off_and_recovers(&env),
            )
            .await;
    }
    let mut factory_sim = None;
    checks
        .run(
            "the factory's five layers pull every image through the chain",
            async {
                factory_sim = Some(factory_pulls_through_five_layers(&env).await?);
                Ok(())
            },
        )
        .await;
    drop(factory_sim);
    checks.finish()
}
