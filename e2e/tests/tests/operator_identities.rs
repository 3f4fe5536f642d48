//! The operator against a real control plane and the IoT Hub emulator (issue 4): convergence,
//! one registry operation per new device, zero writes on a clean resync, drift under Manage and
//! Observe, parents re-created out of band, ownership conflicts and adoption, removal and
//! deletion under Delete and Detach, invalid specs, and bad credentials.

mod common;

use anyhow::{Context as _, bail, ensure};
use common::leaks::LeakScan;
use common::{Env, assert_hub_matches, example, hierarchy_yaml, stat};
use e2e_harness::Checks;
use edge_hierarchy_operator::api::DeviceState;
use serde_json::{Value, json};

async fn converge_examples(env: &Env) -> anyhow::Result<()> {
    env.namespace("examples").await?;
    let before = env.hub.admin.stats().await?;
    env.apply("examples", &example("tutorial.yaml")).await?;
    env.apply("examples", &example("factory.yaml")).await?;
    for (name, count) in [("tutorial", 2u32), ("factory", 36)] {
        let h = env
            .wait_condition("examples", name, "Ready", "True")
            .await?;
        let status = h.status.unwrap();
        let summary = status.summary.clone().context("summary")?;
        ensure!(
            summary.devices == count && summary.registered == count && summary.drifted == 0,
            "{name}: summary {summary:?}"
        );
        let with_parent = h.spec.devices.iter().filter(|d| d.parent.is_some()).count() as u32;
        ensure!(
            summary.parented == with_parent,
            "{name}: parented {} of {with_parent}",
            summary.parented
        );
        ensure!(
            status
                .devices
                .iter()
                .all(|d| d.state == DeviceState::Ready && d.device_scope.is_some()),
            "{name}: {:?}",
            status.devices
        );
        ensure!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "False"),
            "{name}: Stalled not False"
        );
        assert_hub_matches(env, "examples", name).await?;
        env.wait_event(
            "examples",
            name,
            "Created",
            &format!("created {count} devices"),
        )
        .await
        .or_else(|_| {
            // The factory's layers are created in several rounds of one reconcile: one Event.
            bail!("no Created event for {name}")
        })?;
    }
    // One registry operation per new device (38 devices created by bulk calls), and for each new
    // Leaf device the reads of the key the hub generated, which its bundle carries. The bundle
    // writes during the device rounds and the bundle step each read it until one bundle holds
    // it: 29 reads for 13 leaves when measured, bounded here at three per leaf.
    let leaves: usize = ["tutorial.yaml", "factory.yaml"]
        .iter()
        .map(|f| {
            let spec: serde_json::Value = serde_yaml::from_str(&example(f)).expect("example YAML");
            spec["spec"]["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["type"] == "Leaf")
                .count()
        })
        .sum();
    let after = env.hub.admin.stats().await?;
    let registry_ops = stat(&after, "registryOperations") - stat(&before, "registryOperations");
    println!("38 new devices ({leaves} of them Leaf) cost {registry_ops} registry operations");
    ensure!(
        (38..=38 + 3 * leaves as u64).contains(&registry_ops),
        "38 new devices ({leaves} of them Leaf) cost {registry_ops} registry operations; stats: {after}"
    );
    Ok(())
}

async fn clean_resync_writes_nothing(env: &Env) -> anyhow::Result<()> {
    let before = env.hub.admin.stats().await?;
    env.resync("examples", "factory").await?;
    env.resync("examples", "tutorial").await?;
    let after = env.hub.admin.stats().await?;
    let writes = stat(&after, "writeCalls") - stat(&before, "writeCalls");
    ensure!(
        writes == 0,
        "a resync with no drift made {writes} write calls; stats: {after}"
    );
    ensure!(
        stat(&after, "total") > stat(&before, "total"),
        "the resync did not read the hub at all"
    );
    Ok(())
}

/// top -> mid -> low, and a Leaf below mid; each test uses its own id prefix, since two
/// hierarchies claiming one id is a conflict (tested on its own below).
fn drift_devices(prefix: &str) -> String {
    "    - {id: d-top}\n    - {id: d-mid, parent: d-top}\n    - {id: d-low, parent: d-mid}\n    - {id: d-sensor, parent: d-mid, type: Leaf}\n"
        .replace("d-", &format!("{prefix}-"))
}

/// Each out-of-band change: what to do in the hub, the device, and text the drift entry contains.
async fn make_drift(env: &Env, prefix: &str, case: &str) -> anyhow::Result<(String, &'static str)> {
    let admin = &env.hub.admin;
    let id = |name: &str| format!("{prefix}-{name}");
    let (device, needle) = match case {
        "parent link removed" => {
            admin
                .edit_device(&id("low"), |d| d["parentScopes"] = json!([]))
                .await?;
            ("low", "parent link")
        }
        "edge capability off" => {
            admin
                .edit_device(&id("mid"), |d| d["capabilities"]["iotEdge"] = json!(false))
                .await?;
            ("mid", "edge capability is off")
        }
        "device disabled" => {
            admin
                .edit_device(&id("top"), |d| d["status"] = json!("disabled"))
                .await?;
            ("top", "disabled")
        }
        "device deleted" => {
            admin.delete_device(&id("sensor")).await?;
            ("sensor", "deleted from the hub outside the operator")
        }
        "tags changed" => {
            admin
                .patch_tags(
                    &id("low"),
                    json!({"edgeHierarchy": {"layer": 9, "deployment": "rogue"}}),
                )
                .await?;
            ("low", "ownership tags differ")
        }
        _ => unreachable!(),
    };
    Ok((id(device), needle))
}

const DRIFT_CASES: [&str; 5] = [
    "parent link removed",
    "edge capability off",
    "device disabled",
    "device deleted",
    "tags changed",
];

async fn drift_is_corrected_under_manage(env: &Env) -> anyhow::Result<()> {
    env.namespace("drift").await?;
    env.apply("drift", &hierarchy_yaml("plant", "", &drift_devices("dm")))
        .await?;
    env.wait_condition("drift", "plant", "Ready", "True")
        .await?;
    for case in DRIFT_CASES {
        let (device, needle) = make_drift(env, "dm", case).await?;
        let device = device.as_str();
        env.poke("drift", "plant").await?;
        let what = format!("{case}: drift on {device} reported as corrected");
        env.wait_status("drift", "plant", &what, |s| {
            s.devices.iter().any(|d| {
                d.id == device
                    && d.drift
                        .iter()
                        .any(|x| x.contains(needle) && !x.contains("reconcile: Observe"))
            })
        })
        .await
        .with_context(|| case.to_string())?;
        env.wait_condition("drift", "plant", "Ready", "True")
            .await?;
        assert_hub_matches(env, "drift", "plant")
            .await
            .with_context(|| format!("{case}: hub not corrected"))?;
        env.wait_event("drift", "plant", "DriftCorrected", device)
            .await
            .with_context(|| case.to_string())?;
    }
    Ok(())
}

async fn drift_is_only_reported_under_observe(env: &Env) -> anyhow::Result<()> {
    env.namespace("observe").await?;
    env.apply(
        "observe",
        &hierarchy_yaml("plant", "", &drift_devices("do")),
    )
    .await?;
    env.wait_condition("observe", "plant", "Ready", "True")
        .await?;
    env.apply(
        "observe",
        &hierarchy_yaml("plant", ", reconcile: Observe", &drift_devices("do")),
    )
    .await?;
    env.wait_condition("observe", "plant", "Ready", "True")
        .await?;
    for case in DRIFT_CASES {
        let (device, needle) = make_drift(env, "do", case).await?;
        let device = device.as_str();
        let hub_before = env.hub.admin.twins(&[device]).await?.remove(device);
        let writes_before = stat(&env.hub.admin.stats().await?, "writeCalls");
        env.poke("observe", "plant").await?;
        let what = format!("{case}: drift on {device} reported, not corrected");
        let status = env
            .wait_status("observe", "plant", &what, |s| {
                s.devices.iter().any(|d| {
                    d.id == device
                        && d.state == DeviceState::Drifted
                        && d.drift
                            .iter()
                            .any(|x| x.contains(needle) && x.contains("not"))
                })
            })
            .await
            .with_context(|| case.to_string())?;
        ensure!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "DriftDetected" && c.status == "True"),
            "{case}: DriftDetected not True"
        );
        ensure!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False"),
            "{case}: Ready not False"
        );
        let writes_after = stat(&env.hub.admin.stats().await?, "writeCalls");
        ensure!(
            writes_after == writes_before,
            "{case}: Observe wrote {} times to the hub",
            writes_after - writes_before
        );
        let hub_after = env.hub.admin.twins(&[device]).await?.remove(device);
        ensure!(
            hub_before.as_ref().map(strip_volatile) == hub_after.as_ref().map(strip_volatile),
            "{case}: the hub changed under Observe"
        );
        env.wait_event("observe", "plant", "DriftDetected", device)
            .await
            .with_context(|| case.to_string())?;
    }
    Ok(())
}

fn strip_volatile(twin: &Value) -> Value {
    let mut t = twin.clone();
    for key in ["lastActivityTime", "connectionState", "statusUpdateTime"] {
        t.as_object_mut().map(|o| o.remove(key));
    }
    t
}

async fn recreated_parent_relinks_children(env: &Env) -> anyhow::Result<()> {
    env.namespace("relink").await?;
    env.apply("relink", &hierarchy_yaml("plant", "", &drift_devices("dr")))
        .await?;
    env.wait_condition("relink", "plant", "Ready", "True")
        .await?;
    let old_scope = env.hub.admin.twin("dr-mid").await?["deviceScope"].clone();
    env.hub.admin.delete_device("dr-mid").await?;
    env.hub
        .admin
        .create_device("dr-mid", true, json!({"parentScopes": []}))
        .await?;
    let new_scope = env.hub.admin.twin("dr-mid").await?["deviceScope"].clone();
    ensure!(
        old_scope != new_scope,
        "re-creating did not change the scope"
    );
    env.poke("relink", "plant").await?;
    env.wait_status(
        "relink",
        "plant",
        "children re-linked to the new scope of dr-mid",
        |s| {
            s.devices.iter().all(|d| d.state == DeviceState::Ready)
                && s.devices.iter().any(|d| {
                    d.id == "dr-mid"
                        && d.device_scope.as_ref().map(|x| json!(x)) == Some(new_scope.clone())
                })
        },
    )
    .await?;
    let twins = assert_hub_matches(env, "relink", "plant").await?;
    ensure!(
        twins["dr-low"]["parentScopes"] == json!([new_scope]),
        "dr-low not re-linked: {}",
        twins["dr-low"]["parentScopes"]
    );
    ensure!(
        twins["dr-sensor"]["deviceScope"] == new_scope,
        "dr-sensor not re-linked"
    );
    Ok(())
}

async fn unowned_device_conflicts_then_is_adopted(env: &Env) -> anyhow::Result<()> {
    env.namespace("adopt").await?;
    env.hub
        .admin
        .create_device("legacy-gw", true, json!({}))
        .await?;
    env.hub
        .admin
        .patch_tags("legacy-gw", json!({"site": "berlin"}))
        .await?;
    let before = env.hub.admin.twin("legacy-gw").await?;
    let devices = "    - {id: legacy-gw}\n    - {id: legacy-child, parent: legacy-gw}\n";
    env.apply("adopt", &hierarchy_yaml("plant", "", devices))
        .await?;
    let h = env
        .wait_condition("adopt", "plant", "Stalled", "True")
        .await?;
    let stalled = common::condition(&h, "Stalled")?;
    let status = h.status.unwrap();
    ensure!(
        stalled.reason == "OwnershipConflict"
            && stalled.message.contains("legacy-gw")
            && stalled.message.contains("adoptExisting"),
        "{stalled:?}"
    );
    ensure!(
        status
            .devices
            .iter()
            .any(|d| d.id == "legacy-gw" && d.state == DeviceState::Conflict),
        "{:?}",
        status.devices
    );
    let after = env.hub.admin.twin("legacy-gw").await?;
    ensure!(
        strip_volatile(&before) == strip_volatile(&after),
        "the unowned device was modified"
    );
    ensure!(
        env.hub.admin.device("legacy-child").await?.is_none(),
        "a child was linked to a device we do not own"
    );
    env.wait_event("adopt", "plant", "OwnershipConflict", "legacy-gw")
        .await?;

    env.apply(
        "adopt",
        &hierarchy_yaml("plant", ", adoptExisting: true", devices),
    )
    .await?;
    env.wait_condition("adopt", "plant", "Ready", "True")
        .await?;
    let twins = assert_hub_matches(env, "adopt", "plant").await?;
    // Tags outside edgeHierarchy are the user's: adoption keeps them.
    ensure!(
        twins["legacy-gw"]["tags"]["site"] == json!("berlin"),
        "the user's tags were not kept: {}",
        twins["legacy-gw"]["tags"]
    );
    ensure!(
        twins["legacy-gw"]["deviceScope"] == before["deviceScope"],
        "adoption re-created the device"
    );
    Ok(())
}

async fn two_hierarchies_claiming_one_id(env: &Env) -> anyhow::Result<()> {
    env.namespace("claim-a").await?;
    env.namespace("claim-b").await?;
    let devices = "    - {id: shared-gw}\n";
    env.apply("claim-a", &hierarchy_yaml("first", "", devices))
        .await?;
    env.wait_condition("claim-a", "first", "Ready", "True")
        .await?;
    let before = env.hub.admin.twin("shared-gw").await?;
    env.apply(
        "claim-b",
        &hierarchy_yaml("second", ", adoptExisting: true", devices),
    )
    .await?;
    let h = env
        .wait_condition("claim-b", "second", "Stalled", "True")
        .await?;
    let stalled = common::condition(&h, "Stalled")?;
    ensure!(stalled.message.contains("claim-a/first"), "{stalled:?}");
    env.resync("claim-a", "first").await?;
    env.wait_condition("claim-a", "first", "Ready", "True")
        .await?;
    ensure!(
        strip_volatile(&before) == strip_volatile(&env.hub.admin.twin("shared-gw").await?),
        "the first hierarchy's device changed"
    );
    Ok(())
}

async fn removal_and_deletion(env: &Env) -> anyhow::Result<()> {
    let admin = &env.hub.admin;
    env.namespace("removal").await?;
    let three = "    - {id: r-top}\n    - {id: r-mid, parent: r-top}\n    - {id: r-low, parent: r-mid}\n    - {id: r-sensor, parent: r-low, type: Leaf}\n";
    env.apply("removal", &hierarchy_yaml("deleting", "", three))
        .await?;
    env.apply(
        "removal",
        &hierarchy_yaml(
            "detaching",
            ", deletion: Detach",
            &three.replace("r-", "k-"),
        ),
    )
    .await?;
    env.wait_condition("removal", "deleting", "Ready", "True")
        .await?;
    env.wait_condition("removal", "detaching", "Ready", "True")
        .await?;

    // Removing devices from the spec: deleted under Delete, left under Detach.
    let two = "    - {id: r-top}\n    - {id: r-mid, parent: r-top}\n";
    env.apply("removal", &hierarchy_yaml("deleting", "", two))
        .await?;
    env.apply(
        "removal",
        &hierarchy_yaml("detaching", ", deletion: Detach", &two.replace("r-", "k-")),
    )
    .await?;
    env.wait_condition("removal", "deleting", "Ready", "True")
        .await?;
    env.wait_condition("removal", "detaching", "Ready", "True")
        .await?;
    common::wait_until_absent(admin, &["r-low", "r-sensor"]).await?;
    ensure!(
        admin.device("k-low").await?.is_some() && admin.device("k-sensor").await?.is_some(),
        "Detach removed devices"
    );
    env.wait_event("removal", "deleting", "Deleted", "r-sensor, r-low")
        .await?;

    // Deleting the hierarchies: Delete removes every owned device, then the finalizer goes.
    env.hierarchies("removal")
        .delete("deleting", &Default::default())
        .await?;
    env.hierarchies("removal")
        .delete("detaching", &Default::default())
        .await?;
    common::wait_until_gone(env, "removal", "deleting").await?;
    common::wait_until_gone(env, "removal", "detaching").await?;
    for id in ["r-top", "r-mid"] {
        ensure!(
            admin.device(id).await?.is_none(),
            "{id} still in the hub after the hierarchy was deleted"
        );
    }
    for id in ["k-top", "k-mid", "k-low", "k-sensor"] {
        ensure!(
            admin.device(id).await?.is_some(),
            "{id} deleted despite Detach"
        );
    }
    Ok(())
}

async fn invalid_specs_stall_and_write_nothing(env: &Env) -> anyhow::Result<()> {
    env.namespace("invalid").await?;
    let many: String = (0..101)
        .map(|i| format!("    - {{id: kid-{i}, parent: top, type: Leaf}}\n"))
        .collect();
    let deep: String = (1..=6)
        .map(|i| {
            if i == 1 {
                "    - {id: g1}\n".to_string()
            } else {
                format!("    - {{id: g{i}, parent: g{}}}\n", i - 1)
            }
        })
        .collect();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing-parent",
            "    - {id: a, parent: nowhere}\n".into(),
            "parent \"nowhere\" is not a device",
        ),
        (
            "cycle",
            "    - {id: top}\n    - {id: a, parent: b}\n    - {id: b, parent: a}\n".into(),
            "cycle",
        ),
        (
            "leaf-parent",
            "    - {id: top}\n    - {id: s, parent: top, type: Leaf}\n    - {id: c, parent: s}\n"
                .into(),
            "is a Leaf device",
        ),
        (
            "too-many-children",
            format!("    - {{id: top}}\n{many}"),
            "101 children",
        ),
        ("six-generations", deep, "layer 6"),
        (
            "unknown-deployment",
            "    - {id: top, deployment: ghost}\n".into(),
            "\"ghost\" is not in spec.deployments",
        ),
    ];
    let writes_before = stat(&env.hub.admin.stats().await?, "writeCalls");
    for (name, devices, _) in &cases {
        env.apply("invalid", &hierarchy_yaml(name, "", devices))
            .await
            .with_context(|| format!("{name} was rejected by the apiserver"))?;
    }
    for (name, _, needle) in &cases {
        let h = env
            .wait_condition("invalid", name, "Stalled", "True")
            .await?;
        let stalled = common::condition(&h, "Stalled")?;
        ensure!(
            stalled.reason == "InvalidSpec" && stalled.message.contains(needle),
            "{name}: {stalled:?}"
        );
        env.wait_event("invalid", name, "InvalidSpec", needle)
            .await?;
    }
    let writes_after = stat(&env.hub.admin.stats().await?, "writeCalls");
    ensure!(
        writes_after == writes_before,
        "invalid specs caused {} hub writes",
        writes_after - writes_before
    );
    for id in ["a", "b", "top", "s", "c", "kid-0", "g1"] {
        ensure!(
            env.hub.admin.device(id).await?.is_none(),
            "device {id} of an invalid spec is in the hub"
        );
    }
    Ok(())
}

/// A case name, the Secret key and value to write (None: delete the Secret), and the text the
/// Stalled message must contain.
type CredentialCase<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a str);

async fn bad_credentials_stall_and_recover(env: &Env) -> anyhow::Result<()> {
    env.namespace("creds").await?;
    let good = env.hub.emulator.connection_string.clone();
    let wrong_key = good.split(";SharedAccessKey=").next().unwrap().to_string()
        + ";SharedAccessKey=d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmc=";
    let devices = "    - {id: c-top}\n";
    let cases: [CredentialCase; 4] = [
        (
            "wrong key",
            Some(("connectionString", wrong_key.as_str())),
            "rejected the credentials in Secret \"iothub-service\"",
        ),
        (
            "malformed",
            Some(("connectionString", "HostName=only-a-host")),
            "Secret \"iothub-service\" key \"connectionString\" is not a valid IoT Hub connection string",
        ),
        (
            "missing key",
            Some(("other", good.as_str())),
            "Secret \"iothub-service\" has no key \"connectionString\"",
        ),
        ("missing Secret", None, "Secret \"iothub-service\""),
    ];
    env.apply("creds", &hierarchy_yaml("plant", "", devices))
        .await?;
    env.wait_condition("creds", "plant", "Ready", "True")
        .await?;
    for (case, secret, needle) in cases {
        match secret {
            Some((key, value)) => {
                env.put_secret("creds", "iothub-service", key, value)
                    .await?
            }
            None => {
                let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
                    kube::Api::namespaced(env.client.clone(), "creds");
                secrets
                    .delete("iothub-service", &Default::default())
                    .await?;
            }
        }
        env.poke("creds", "plant").await?;
        let h = env
            .wait_condition("creds", "plant", "Stalled", "True")
            .await
            .with_context(|| case.to_string())?;
        let stalled = common::condition(&h, "Stalled")?;
        ensure!(
            stalled.reason == "BadCredentials" && stalled.message.contains(needle),
            "{case}: {stalled:?}"
        );
        ensure!(
            !stalled
                .message
                .contains(good.split("SharedAccessKey=").nth(1).unwrap()),
            "{case}: the key is in the message"
        );
        // Fixing the Secret recovers without restarting the operator or poking the hierarchy.
        env.put_secret("creds", "iothub-service", "connectionString", &good)
            .await?;
        env.wait_condition("creds", "plant", "Ready", "True")
            .await
            .with_context(|| format!("{case}: no recovery after the fix"))?;
        env.wait_condition("creds", "plant", "Stalled", "False")
            .await?;
    }
    Ok(())
}

async fn no_secret_leaks(env: &Env) -> anyhow::Result<()> {
    let mut device_keys = Vec::new();
    for id in ["top-layer", "lower-layer", "dm-top", "dm-mid"] {
        device_keys.extend(env.hub.admin.device_keys(id).await?);
    }
    LeakScan::new(env)
        .look_for("a key", device_keys)
        .run(&["examples", "drift", "observe", "adopt", "creds"])
}

async fn metrics_and_health_are_served(env: &Env) -> anyhow::Result<()> {
    let (address, metrics) = common::scrape_metrics(env).await?;
    let http = reqwest::Client::new();
    let ok_reconciles = metrics
        .lines()
        .find(|l| l.starts_with("edge_hierarchy_reconciles_total{outcome=\"ok\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    ensure!(
        ok_reconciles > 0.0,
        "no successful reconcile counted:\n{metrics}"
    );
    ensure!(
        metrics.contains("edge_hierarchy_iothub_calls_total{"),
        "no hub calls counted:\n{metrics}"
    );
    for path in ["healthz", "readyz"] {
        let status = http
            .get(format!("http://{address}/{path}"))
            .send()
            .await?
            .status();
        ensure!(status.is_success(), "/{path} answered {status}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_manages_identities() -> anyhow::Result<()> {
    let env = Env::start(&["--strict"]).await?;
    let mut checks = Checks::new();
    if checks
        .run(
            "tutorial and factory converge, one registry op per device",
            converge_examples(&env),
        )
        .await
    {
        checks
            .run(
                "a clean resync writes nothing",
                clean_resync_writes_nothing(&env),
            )
            .await;
    }
    checks
        .run(
            "drift is corrected under Manage",
            drift_is_corrected_under_manage(&env),
        )
        .await;
    checks
        .run(
            "drift is only reported under Observe",
            drift_is_only_reported_under_observe(&env),
        )
        .await;
    checks
        .run(
            "a parent re-created out of band gets its children re-linked",
            recreated_parent_relinks_children(&env),
        )
        .await;
    checks
        .run(
            "an unowned device conflicts, then is adopted",
            unowned_device_conflicts_then_is_adopted(&env),
        )
        .await;
    checks
        .run(
            "two hierarchies claiming one id",
            two_hierarchies_claiming_one_id(&env),
        )
        .await;
    checks
        .run(
            "removal and deletion under Delete and Detach",
            removal_and_deletion(&env),
        )
        .await;
    checks
        .run(
            "invalid specs stall and write nothing",
            invalid_specs_stall_and_write_nothing(&env),
        )
        .await;
    checks
        .run(
            "bad credentials stall and recover",
            bad_credentials_stall_and_recover(&env),
        )
        .await;
    checks
        .run("no key or token leaks", no_secret_leaks(&env))
        .await;
    checks
        .run(
            "metrics and health endpoints are served",
            metrics_and_health_are_served(&env),
        )
        .await;
    checks.finish()
}
