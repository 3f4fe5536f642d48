//! Coming over from iotedge_config_cli (issue 15): a hub populated the way the tool populates it
//! (Microsoft's SDK, device by device, parents first, each deployment applied to its device),
//! then `edge-hierarchy-operator import --adopt` of the tutorial's iotedge_config.yaml applied:
//! every device is adopted with zero registry creates, and the hub ends in the same shape as
//! examples/tutorial.yaml gives it (devices, kinds, keys, parent links, modules).

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context as _, ensure};
use common::{Env, example, wait_for};
use e2e_harness::{workspace_bin, workspace_root};
use serde_json::{Value, json};

const IDS: [&str; 2] = ["top-layer", "lower-layer"];

/// What "the same hub state" compares, per device: kind, authentication, status, parent, and
/// the modules its edge agent is asked to run (image names without registry and tag: the
/// tutorial's files pin older versions than examples/tutorial.yaml; module names lower-cased: the
/// tutorial's deploymentLowerLayer.json spells the sensor `simulatedTemperatureSensor`, the
/// example `SimulatedTemperatureSensor`).
type Shape = BTreeMap<String, Value>;

async fn hub_shape(env: &Env) -> anyhow::Result<Option<Shape>> {
    let twins = env.hub.admin.twins(&IDS).await?;
    let scope_owner: BTreeMap<String, String> = twins
        .iter()
        .filter_map(|(id, t)| Some((t["deviceScope"].as_str()?.to_string(), id.clone())))
        .collect();
    let mut shape = Shape::new();
    for id in IDS {
        let Some(twin) = twins.get(id) else {
            return Ok(None);
        };
        let agent = env
            .hub
            .admin
            .get_json(&format!("twins/{id}/modules/%24edgeAgent"))
            .await?;
        let desired = &agent["properties"]["desired"];
        let mut modules = BTreeMap::new();
        for group in ["systemModules", "modules"] {
            for (name, module) in desired[group].as_object().into_iter().flatten() {
                let image = module["settings"]["image"].as_str().unwrap_or_default();
                let base = image.rsplit('/').next().unwrap_or_default();
                let base = base.split(':').next().unwrap_or_default();
                modules.insert(name.to_lowercase(), json!(base));
            }
        }
        if modules.is_empty() {
            return Ok(None);
        }
        let parent = twin["parentScopes"]
            .as_array()
            .and_then(|s| s.first())
            .and_then(Value::as_str)
            .map(|s| {
                scope_owner
                    .get(s)
                    .cloned()
                    .unwrap_or_else(|| format!("unknown scope {s}"))
            });
        shape.insert(
            id.to_string(),
            json!({
                "iotEdge": twin["capabilities"]["iotEdge"],
                "authenticationType": twin["authenticationType"],
                "status": twin["status"],
                "parent": parent,
                "modules": modules,
            }),
        );
    }
    Ok(Some(shape))
}

async fn wait_for_shape(env: &Env) -> anyhow::Result<Shape> {
    wait_for(
        env,
        "both devices with their modules in the hub",
        || async { hub_shape(env).await.ok().flatten() },
    )
    .await
}

fn creates(stats: &Value) -> u64 {
    ["devices.create", "devices.bulk"]
        .iter()
        .flat_map(|op| {
            stats["operations"][op]
                .as_object()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|(_, n)| n.as_u64())
        .sum()
}

/// The tool's way: the official SDK, run from the venv `make test` builds.
fn populate_like_the_tool(env: &Env) -> anyhow::Result<Value> {
    let python = workspace_root().join(".venv/bin/python");
    ensure!(
        python.is_file(),
        "{} is missing: `make venv` installs Microsoft's azure-iot-hub SDK there",
        python.display()
    );
    let ca = env.dir.path().join("emulator-ca.pem");
    std::fs::write(&ca, &env.hub.emulator.ca_pem)?;
    let out = Command::new(python)
        .arg(workspace_root().join("e2e/tests/scripts/populate_like_iotedge_config.py"))
        .arg(&env.hub.emulator.connection_string)
        .arg(workspace_root().join("operator/src/import/fixtures/tutorial/templates/tutorial"))
        .env("REQUESTS_CA_BUNDLE", &ca)
        .output()?;
    ensure!(
        out.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `import --adopt` of the tutorial's config, applied: ConfigMaps as printed, the hierarchy
/// pointed at the emulator's CA.
async fn apply_import(env: &Env, namespace: &str) -> anyhow::Result<String> {
    let config = workspace_root().join("operator/src/import/fixtures/tutorial/iotedge_config.yaml");
    let out = Command::new(workspace_bin("edge-hierarchy-operator")?)
        .arg("import")
        .arg(&config)
        .arg("--adopt")
        .output()?;
    ensure!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut name = None;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let mut object: Value = serde::Deserialize::deserialize(document)?;
        if object.is_null() {
            continue;
        }
        if object["kind"] == "EdgeHierarchy" {
            object["spec"]["iotHub"]["caSecretRef"] = json!({"name": "iothub-ca"});
            object["spec"]["iotHub"]["rateLimits"] = json!({"sku": "S3"});
            name = object["metadata"]["name"].as_str().map(str::to_string);
            env.apply(namespace, &serde_yaml::to_string(&object)?)
                .await?;
        } else {
            object["metadata"]["namespace"] = json!(namespace);
            let applied = env
                .cluster
                .kubectl_apply_stdin(&serde_yaml::to_string(&object)?)?;
            ensure!(
                applied.status.success(),
                "kubectl apply: {}",
                String::from_utf8_lossy(&applied.stderr)
            );
        }
    }
    name.context("the import printed no EdgeHierarchy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_the_tool_made_is_adopted_with_zero_creates() -> anyhow::Result<()> {
    let env = Env::start(&[]).await?;
    // The reference: examples/tutorial.yaml on an empty hub, then deleted with its devices.
    env.namespace("reference").await?;
    env.apply("reference", &example("tutorial.yaml")).await?;
    env.wait_condition("reference", "tutorial", "Ready", "True")
        .await?;
    let reference = wait_for_shape(&env).await?;
    env.hierarchies("reference")
        .delete("tutorial", &Default::default())
        .await?;
    common::wait_until_gone(&env, "reference", "tutorial").await?;
    common::wait_until_absent(&env.hub.admin, &IDS).await?;

    let made = populate_like_the_tool(&env)?;
    eprintln!("the SDK made {made}");
    let tool_scopes = made["scopes"].clone();
    // A user imports after the tool has run; by then the hub's queries show its devices.
    common::wait_query_shows(
        &env,
        "SELECT deviceId FROM devices WHERE deviceId = 'lower-layer'",
        |_| true,
    )
    .await?;
    env.namespace("imported").await?;
    let before = env.hub.admin.stats().await?;
    let name = apply_import(&env, "imported").await?;
    env.wait_condition("imported", &name, "Ready", "True")
        .await?;
    let status = env.status("imported", &name).await?;
    for device in &status.devices {
        ensure!(
            device.state == edge_hierarchy_operator::api::DeviceState::Ready,
            "{} is {:?}: {:?}",
            device.id,
            device.state,
            device.message
        );
        // Adopted, not re-created: the device keeps the scope (and generation) the tool made.
        ensure!(
            device.device_scope.as_deref() == tool_scopes[&device.id].as_str(),
            "{} has scope {:?}, the tool made {}",
            device.id,
            device.device_scope,
            tool_scopes[&device.id]
        );
    }
    let imported = wait_for_shape(&env).await?;
    let after = env.hub.admin.stats().await?;
    let log = env.operator.output();
    let changes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("applied hub changes"))
        .collect();
    ensure!(
        creates(&after) == creates(&before),
        "the adoption created devices: {} create or bulk calls; operations before {} after {}; operator: {changes:#?}",
        creates(&after) - creates(&before),
        before["operations"],
        after["operations"]
    );
    eprintln!(
        "zero creates; every device adopted: {:?}",
        status.devices.iter().map(|d| &d.id).collect::<Vec<_>>()
    );
    ensure!(
        imported == reference,
        "the imported hierarchy's hub differs from examples/tutorial.yaml's:\nimported  {}\nreference {}",
        serde_json::to_string(&imported)?,
        serde_json::to_string(&reference)?
    );
    Ok(())
}
