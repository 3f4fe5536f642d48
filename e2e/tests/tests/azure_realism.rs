//! Where the real IoT Hub is harsher than its swagger, against the emulator's Azure rules: each
//! case failed on the operator before it followed the rule.
//!
//! - query expressions of at most 8,192 characters (long device ids in `IN` lists);
//! - a bulk create that answers `DeviceRegisteredWithoutTwin` (the device has no tags);
//! - a configuration edited in the hub is restored by read-modify-write (what else the hub keeps
//!   stays);
//! - twin property names IoT Hub refuses are caught in the manifest, before any write;
//! - at most 100 configurations per hub, checked before any write;
//! - a Leaf moved to the top of the tree has its `deviceScope` cleared (the hub keeps it
//!   otherwise);
//! - query answers are billed by size: a resync selects only what it reads, well under what the
//!   same queries with `SELECT *` are billed;
//! - a used-up daily message quota (403 `IotHubQuotaExceeded`) is its own condition, with a wait
//!   until the reset.

mod common;

use anyhow::{Context as _, ensure};
use common::{Env, example, hierarchy_yaml};
use e2e_harness::Checks;
use serde_json::{Value, json};

/// Leaf ids of 120 characters: 100 of them in one `IN` list would be about 12,500 characters.
fn long_id(i: usize) -> String {
    format!("leaf-{i:03}-{}", "x".repeat(111))
}

async fn long_ids_stay_within_the_query_length_limit(env: &Env) -> anyhow::Result<()> {
    env.namespace("long").await?;
    let mut devices = String::from("    - {id: long-gw}\n");
    for i in 0..100 {
        devices.push_str(&format!(
            "    - {{id: {}, parent: long-gw, type: Leaf}}\n",
            long_id(i)
        ));
    }
    env.apply("long", &hierarchy_yaml("long", "", &devices))
        .await?;
    let h = env.wait_condition("long", "long", "Ready", "True").await?;
    let summary = h.status.and_then(|s| s.summary).context("summary")?;
    ensure!(summary.registered == 101, "{summary:?}");
    ensure!(
        env.hub.admin.device(&long_id(99)).await?.is_some(),
        "the last leaf is in the hub"
    );
    Ok(())
}

/// The emulator is started with `--inject-registered-without-twin twinless-lower`.
async fn devices_registered_without_twin_get_their_tags(env: &Env) -> anyhow::Result<()> {
    env.namespace("twinless").await?;
    let devices = "    - {id: twinless-top}\n    - {id: twinless-lower, parent: twinless-top}\n";
    env.apply("twinless", &hierarchy_yaml("twinless", "", devices))
        .await?;
    let h = env
        .wait_condition("twinless", "twinless", "Ready", "True")
        .await?;
    let uid = h.metadata.uid.clone().context("uid")?;
    let twin = env.hub.admin.twin("twinless-lower").await?;
    ensure!(
        twin.pointer("/tags/edgeHierarchy/uid")
            .and_then(Value::as_str)
            == Some(uid.as_str()),
        "the ownership tags were written after the warning: {twin}"
    );
    Ok(())
}

async fn edited_configurations_are_restored_by_read_modify_write(env: &Env) -> anyhow::Result<()> {
    env.namespace("rmw").await?;
    let h = env.apply("rmw", &example("tutorial.yaml")).await?;
    let uid = h.metadata.uid.clone().context("uid")?;
    env.wait_condition("rmw", "tutorial", "DeploymentsReady", "True")
        .await?;
    let (_, mut configuration) = common::configurations(env, &uid)
        .await?
        .into_iter()
        .next()
        .context("a configuration")?;
    let id = configuration["id"].as_str().context("id")?.to_string();
    let priority = configuration["priority"].clone();
    let etag = configuration["etag"].as_str().map(str::to_string);
    // Someone raises the priority and adds a label of their own in the portal.
    configuration["priority"] = json!(99);
    configuration["labels"]["team"] = json!("line-7");
    env.hub
        .admin
        .put_json(
            &format!("configurations/{id}"),
            &configuration,
            etag.as_deref(),
        )
        .await?;
    env.poke("rmw", "tutorial").await?;
    let restored = common::wait_for(env, "the priority restored", || async {
        let c = env
            .hub
            .admin
            .get_json(&format!("configurations/{id}"))
            .await
            .ok()?;
        (c["priority"] == priority).then_some(c)
    })
    .await?;
    ensure!(
        restored["labels"]["team"] == json!("line-7"),
        "the hub's own label was kept: {}",
        restored["labels"]
    );
    Ok(())
}

async fn refused_twin_property_names_stall_before_any_write(env: &Env) -> anyhow::Result<()> {
    env.namespace("keys").await?;
    let before = env.hub.admin.stats().await?;
    let mut object: Value = serde_yaml::from_str(&example("tutorial.yaml"))?;
    object["spec"]["deployments"][1]["content"]["modulesContent"]["SimulatedTemperatureSensor"] =
        json!({"properties.desired": {"SendData": true, "line#7": {"speed": 1}}});
    env.apply("keys", &serde_yaml::to_string(&object)?).await?;
    let h = env
        .wait_condition("keys", "tutorial", "Stalled", "True")
        .await?;
    let stalled = common::condition(&h, "Stalled")?;
    ensure!(
        stalled.reason == "InvalidSpec"
            && stalled.message.contains("lower-layer")
            && stalled.message.contains("line#7"),
        "{stalled:?}"
    );
    let after = env.hub.admin.stats().await?;
    ensure!(
        common::stat(&after, "writeCalls") == common::stat(&before, "writeCalls"),
        "nothing was written: {before} -> {after}"
    );
    Ok(())
}

async fn the_hub_wide_configuration_limit_stalls_before_any_write(env: &Env) -> anyhow::Result<()> {
    env.namespace("full").await?;
    let existing = env
        .hub
        .admin
        .get_json("configurations")
        .await?
        .as_array()
        .map_or(0, Vec::len);
    // Someone else's configurations fill the hub to one below its limit of 100.
    let filler: Vec<String> = (existing..99).map(|i| format!("other-{i}")).collect();
    for id in &filler {
        let body = json!({
            "id": id, "schemaVersion": "1.0", "priority": 1, "targetCondition": "tags.none='x'",
            "content": {"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1"}}}},
        });
        env.hub
            .admin
            .put_json(&format!("configurations/{id}"), &body, None)
            .await?;
    }
    let h = env.apply("full", &example("tutorial.yaml")).await?;
    let uid = h.metadata.uid.clone().context("uid")?;
    let h = env
        .wait_condition("full", "tutorial", "Stalled", "True")
        .await?;
    let stalled = common::condition(&h, "Stalled")?;
    ensure!(
        stalled.reason == "InvalidSpec" && stalled.message.contains("limit of 100"),
        "{stalled:?}"
    );
    ensure!(
        common::configurations(env, &uid).await?.is_empty(),
        "no configuration was created"
    );
    for id in &filler {
        env.hub
            .admin
            .delete_json(&format!("configurations/{id}"))
            .await?;
    }
    Ok(())
}

/// Applies the `moved` hierarchy with `devices`, waits until Ready and returns the hub's
/// identities of its gateway and its sensor.
async fn moved_applied(env: &Env, devices: &str) -> anyhow::Result<(Value, Value)> {
    env.apply("moved", &hierarchy_yaml("moved", "", devices))
        .await?;
    env.wait_condition("moved", "moved", "Ready", "True")
        .await?;
    let mut found = Vec::new();
    for id in ["moved-gw", "moved-sensor"] {
        found.push(env.hub.admin.device(id).await?.context(id)?);
    }
    let sensor = found.pop().context("moved-sensor")?;
    let gateway = found.pop().context("moved-gw")?;
    Ok((gateway, sensor))
}

async fn a_leaf_moved_to_the_top_is_detached(env: &Env) -> anyhow::Result<()> {
    env.namespace("moved").await?;
    let behind = "    - {id: moved-gw}\n    - {id: moved-sensor, parent: moved-gw, type: Leaf}\n";
    let (gateway, sensor) = moved_applied(env, behind).await?;
    ensure!(
        sensor["deviceScope"] == gateway["deviceScope"] && gateway["deviceScope"].is_string(),
        "behind its gateway the sensor has the gateway's scope: {sensor}"
    );
    let on_top = "    - {id: moved-gw}\n    - {id: moved-sensor, type: Leaf}\n";
    let (_, sensor) = moved_applied(env, on_top).await?;
    let scope = sensor["deviceScope"].as_str().unwrap_or_default();
    let parents = sensor["parentScopes"].as_array().map_or(0, Vec::len);
    ensure!(
        scope.is_empty() && parents == 0,
        "on top the sensor has no parent link: {sensor}"
    );
    Ok(())
}

/// Billed messages so far (the emulator's meter).
async fn billed(env: &Env) -> anyhow::Result<u64> {
    let stats = env.hub.admin.stats().await?;
    stats["messages"]["total"]
        .as_u64()
        .context("messages.total")
}

async fn a_resync_is_billed_for_what_it_reads_only(env: &Env) -> anyhow::Result<()> {
    env.namespace("billed").await?;
    let h = env.apply("billed", &example("factory.yaml")).await?;
    let uid = h.metadata.uid.clone().context("uid")?;
    env.wait_condition("billed", "factory", "DeploymentsReady", "True")
        .await?;
    let before = billed(env).await?;
    env.resync("billed", "factory").await?;
    let resync = billed(env).await? - before;

    // The same two reads a resync makes, as full twins.
    let ids: Vec<String> = h
        .spec
        .devices
        .iter()
        .map(|d| format!("'{}'", d.id))
        .collect();
    let before = billed(env).await?;
    env.hub
        .admin
        .query(&format!(
            "SELECT * FROM devices WHERE tags.edgeHierarchy.uid = '{uid}'"
        ))
        .await?;
    env.hub
        .admin
        .query(&format!(
            "SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent' AND deviceId IN [{}]",
            ids.join(", ")
        ))
        .await?;
    let full = billed(env).await? - before;
    eprintln!("one resync of 36 devices: {resync} messages; the same reads as SELECT *: {full}");
    ensure!(
        resync > 0 && resync * 2 <= full,
        "a resync is billed {resync} messages, the same queries with SELECT * {full}: it should \
         select only what it reads"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_survives_azures_rules() -> anyhow::Result<()> {
    let env = Env::start(&["--inject-registered-without-twin", "twinless-lower"]).await?;
    let mut checks = Checks::new();
    checks
        .run(
            "long device ids stay within the 8,192-character query limit",
            long_ids_stay_within_the_query_length_limit(&env),
        )
        .await;
    checks
        .run(
            "a device registered without its twin gets its tags",
            devices_registered_without_twin_get_their_tags(&env),
        )
        .await;
    checks
        .run(
            "an edited configuration is restored by read-modify-write",
            edited_configurations_are_restored_by_read_modify_write(&env),
        )
        .await;
    checks
        .run(
            "refused twin property names stall before any write",
            refused_twin_property_names_stall_before_any_write(&env),
        )
        .await;
    checks
        .run(
            "a resync is billed for what it reads only",
            a_resync_is_billed_for_what_it_reads_only(&env),
        )
        .await;
    checks
        .run(
            "a Leaf moved to the top of the tree is detached",
            a_leaf_moved_to_the_top_is_detached(&env),
        )
        .await;
    // Last: it fills the hub's configuration budget.
    checks
        .run(
            "the hub-wide configuration limit stalls before any write",
            the_hub_wide_configuration_limit_stalls_before_any_write(&env),
        )
        .await;
    checks.finish()
}

/// A hub with a daily quota of 40 messages: the first hierarchy uses it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_daily_quota_is_reported_and_waited_out() -> anyhow::Result<()> {
    let env = Env::start(&["--daily-message-quota", "40"]).await?;
    env.namespace("quota").await?;
    env.apply("quota", &example("factory.yaml")).await?;
    let h = env
        .wait_status("quota", "factory", "the quota condition", |s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "HubQuotaExceeded")
        })
        .await?;
    let ready = h
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .context("Ready")?;
    ensure!(
        ready.status == "False"
            && ready.message.contains("daily message quota")
            && ready.message.contains("00:00 UTC")
            && ready.message.contains("add units"),
        "{ready:?}"
    );
    ensure!(
        !h.conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True"),
        "the quota resets by itself, so the hierarchy is not stalled: {:?}",
        h.conditions
    );
    env.wait_event("quota", "factory", "HubQuotaExceeded", "00:00 UTC")
        .await?;
    // It waits for the reset rather than retrying: no more requests are refused. The count is
    // taken once it has stood still for 10 s: a reconcile already running when the condition
    // was written may still be refused once (seen in about one run in six, cause not found),
    // while an operator that retries would be refused again within the 45 s that follow.
    let rejected = |stats: &Value| stats["messages"]["rejected"].as_u64().unwrap_or(0);
    let mut first = rejected(&env.hub.admin.stats().await?);
    for _ in 0..6 {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let now = rejected(&env.hub.admin.stats().await?);
        if now == first {
            break;
        }
        eprintln!(
            "     refused calls went from {first} to {now} after the condition; waiting for them to stop"
        );
        first = now;
    }
    tokio::time::sleep(std::time::Duration::from_secs(45)).await;
    let stats = env.hub.admin.stats().await?;
    let later = rejected(&stats);
    ensure!(
        later == first,
        "the operator kept calling a hub whose quota is used up: {first} then {later} refused; calls by operation {}; operator log ends:\n{}",
        stats["operations"],
        env.operator
            .output()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}
