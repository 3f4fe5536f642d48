//! Twin queries lag writes (Learn, "Queries for IoT Hub device and module twins": results are
//! eventually consistent). Against an emulator whose queries see a write only 30 s after it, the
//! operator must not lean on a query to see what it just wrote:
//!
//! - a five-layer chain (and a Leaf of the top layer) is created in one reconcile (each layer's scope read back, not waited
//!   for from the query);
//! - a corrected drift is not corrected again from the stale query answer with an old etag (no
//!   412) on the reconciles that follow;
//! - a hierarchy deleted right after it created its devices deletes them all, from memory and,
//!   after an operator restart, from the ids in its status.
//!
//! Each check failed on the operator before it read back its writes.

mod common;

use anyhow::{Context as _, ensure};
use common::{Env, hierarchy_yaml};
use e2e_harness::Checks;
use serde_json::{Value, json};

/// Longer than any check below takes, so every query in them answers from before the writes.
const LAG: &str = "30000";

/// `<prefix>-1` (top) ... `<prefix>-5` Edge devices in a chain, a Leaf under the last, and a
/// Leaf of the top layer (no parent, so no scope either: only the status's state names it).
fn chain(prefix: &str) -> (String, Vec<String>) {
    let mut ids = Vec::new();
    let mut devices = String::new();
    for layer in 1..=5 {
        let id = format!("{prefix}-{layer}");
        match ids.last() {
            None => devices.push_str(&format!("    - {{id: {id}}}\n")),
            Some(parent) => devices.push_str(&format!("    - {{id: {id}, parent: {parent}}}\n")),
        }
        ids.push(id);
    }
    let leaf = format!("{prefix}-sensor");
    devices.push_str(&format!(
        "    - {{id: {leaf}, parent: {prefix}-5, type: Leaf}}\n"
    ));
    ids.push(leaf);
    let direct = format!("{prefix}-direct");
    devices.push_str(&format!("    - {{id: {direct}, type: Leaf}}\n"));
    ids.push(direct);
    (devices, ids)
}

/// Answers the emulator gave with `status`, over all operations.
fn answers_with(stats: &Value, status: &str) -> u64 {
    stats["operations"]
        .as_object()
        .map(|ops| {
            ops.values()
                .filter_map(|by_status| by_status.get(status).and_then(Value::as_u64))
                .sum()
        })
        .unwrap_or(0)
}

async fn a_deep_chain_is_created_in_one_reconcile(env: &Env) -> anyhow::Result<()> {
    env.namespace("deep").await?;
    let (devices, ids) = chain("deep");
    env.apply("deep", &hierarchy_yaml("deep", "", &devices))
        .await?;
    let h = env.wait_condition("deep", "deep", "Ready", "True").await?;
    let summary = h.status.and_then(|s| s.summary).context("summary")?;
    ensure!(summary.registered == 7, "{summary:?}");
    let created: Vec<String> = env
        .events("deep", "deep")
        .await?
        .into_iter()
        .filter(|e| e.starts_with("Created:"))
        .collect();
    ensure!(
        created.len() == 1 && created[0].contains("created 7 devices"),
        "one reconcile created every layer (a layer per reconcile would mean waiting on the query): {created:?}"
    );
    for id in &ids {
        let twin = env.hub.admin.twin(id).await?;
        ensure!(
            twin["tags"]["edgeHierarchy"]["uid"].is_string(),
            "{id}: {twin}"
        );
    }
    Ok(())
}

async fn a_corrected_drift_is_not_corrected_again_from_a_stale_answer(
    env: &Env,
) -> anyhow::Result<()> {
    let before = env.hub.admin.stats().await?;
    env.hub
        .admin
        .edit_device("deep-3", |d| d["status"] = json!("disabled"))
        .await?;
    // The query shows the edit only after the lag; then the operator enables the device again.
    common::wait_for(env, "the drift on deep-3 corrected", || async {
        env.events("deep", "deep")
            .await
            .ok()?
            .into_iter()
            .find(|e| e.starts_with("DriftCorrected:") && e.contains("deep-3"))
    })
    .await?;
    let device = env.hub.admin.device("deep-3").await?.context("deep-3")?;
    ensure!(device["status"] == "enabled", "{device}");
    // The next reconciles run while the query still shows the device disabled, with the etag
    // from before the fix.
    env.resync("deep", "deep").await?;
    env.resync("deep", "deep").await?;
    let after = env.hub.admin.stats().await?;
    let stale_writes = answers_with(&after, "412") - answers_with(&before, "412");
    let conflicts = answers_with(&after, "409") - answers_with(&before, "409");
    ensure!(
        stale_writes == 0 && conflicts == 0,
        "no write was planned from the stale answer: {stale_writes} answers 412, {conflicts} answers 409"
    );
    let warnings: Vec<String> = env
        .events("deep", "deep")
        .await?
        .into_iter()
        .filter(|e| e.contains("412") || e.starts_with("DeviceWriteFailed"))
        .collect();
    ensure!(warnings.is_empty(), "{warnings:?}");
    Ok(())
}

/// Applies a chain under `name`, waits until Ready, optionally restarts the operator, deletes
/// the hierarchy and checks that no device is left in the hub.
async fn deleted_right_after_creation(
    env: &mut Env,
    name: &str,
    restart: bool,
) -> anyhow::Result<()> {
    env.namespace(name).await?;
    let (devices, ids) = chain(name);
    env.apply(name, &hierarchy_yaml(name, "", &devices)).await?;
    env.wait_condition(name, name, "Ready", "True").await?;
    if restart {
        // What the operator remembers of its writes is gone; only the status names the devices.
        env.operator.kill_hard();
    }
    env.hierarchies(name)
        .delete(name, &Default::default())
        .await?;
    if restart {
        env.restart_operator()?;
    }
    common::wait_until_gone(env, name, name).await?;
    let mut left = Vec::new();
    for id in &ids {
        if env.hub.admin.device(id).await?.is_some() {
            left.push(id.clone());
        }
    }
    ensure!(
        left.is_empty(),
        "every device was deleted although the query did not show them yet; left: {left:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_never_waits_for_a_query_to_see_its_writes() -> anyhow::Result<()> {
    let mut env = Env::start(&["--query-lag-ms", LAG]).await?;
    let mut checks = Checks::new();
    checks
        .run(
            "a five-layer chain is created in one reconcile",
            a_deep_chain_is_created_in_one_reconcile(&env),
        )
        .await;
    checks
        .run(
            "a corrected drift is not corrected again from a stale query answer",
            a_corrected_drift_is_not_corrected_again_from_a_stale_answer(&env),
        )
        .await;
    checks
        .run(
            "a hierarchy deleted right after creation leaves no device",
            deleted_right_after_creation(&mut env, "brief", false),
        )
        .await;
    checks
        .run(
            "after a restart, the status names the devices to delete",
            deleted_right_after_creation(&mut env, "restarted", true),
        )
        .await;
    checks.finish()
}
