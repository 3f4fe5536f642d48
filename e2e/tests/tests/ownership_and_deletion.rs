//! Ownership that tags alone cannot claim, and deletions that finish (issue 13): a device whose
//! twin someone tagged with a hierarchy's uid survives resyncs and the hierarchy's deletion; a
//! hierarchy deleted with `deletion: Detach` and created again takes its devices back (same
//! keys); a namespace deleted together with its hub Secret goes away.

mod common;

use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::{Env, assert_hub_matches, hierarchy_yaml};
use e2e_harness::{Checks, wait_until};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

/// How long a namespace may take to go once its hierarchy's cleanup has run.
const NAMESPACE_GONE: Duration = Duration::from_secs(240);

async fn uid_of(env: &Env, namespace: &str, name: &str) -> anyhow::Result<String> {
    env.hierarchies(namespace)
        .get(name)
        .await?
        .metadata
        .uid
        .context("a hierarchy has a uid")
}

async fn tags_of(env: &Env, id: &str) -> anyhow::Result<Value> {
    Ok(env.hub.admin.twin(id).await?["tags"]["edgeHierarchy"].clone())
}

async fn forged_tags_are_never_enough(env: &Env) -> anyhow::Result<()> {
    let (ns, name) = ("forged", "plant");
    env.namespace(ns).await?;
    let devices = "    - {id: fg-top}\n    - {id: fg-line, parent: fg-top}\n";
    env.apply(ns, &hierarchy_yaml(name, "", devices)).await?;
    env.wait_condition(ns, name, "Ready", "True").await?;
    assert_hub_matches(env, ns, name).await?;
    let uid = uid_of(env, ns, name).await?;
    let real = tags_of(env, "fg-top").await?;

    // Two devices planted by someone with ServiceConnect: one with the hierarchy's tags and no
    // proof, one with a proof copied from a real device.
    let admin = &env.hub.admin;
    let planted = ["fg-planted", "fg-copied"];
    for id in planted {
        admin.create_device(id, true, json!({})).await?;
    }
    let claim = json!({"namespace": ns, "name": name, "uid": uid, "layer": 1});
    admin
        .patch_tags("fg-planted", json!({"edgeHierarchy": claim}))
        .await?;
    let mut copied = claim.clone();
    copied["proof"] = real["proof"].clone();
    admin
        .patch_tags("fg-copied", json!({"edgeHierarchy": copied}))
        .await?;
    let before: Vec<Value> = futures_tags(env, &planted).await?;

    let mut resyncs = 0;
    for _ in 0..3 {
        env.resync(ns, name).await?;
        resyncs += 1;
    }
    let h = env
        .wait_condition(ns, name, "Stalled", "True")
        .await
        .context("forged tags are reported")?;
    let stalled = common::condition(&h, "Stalled")?;
    ensure!(
        stalled.reason == "OwnershipConflict"
            && stalled.message.contains("fg-planted")
            && stalled.message.contains("without the operator's proof"),
        "{stalled:?}"
    );
    for id in planted {
        ensure!(admin.device(id).await?.is_some(), "{id} was deleted");
    }
    ensure!(
        futures_tags(env, &planted).await? == before,
        "the planted devices' tags were written"
    );

    // Deleting the hierarchy (deletion: Delete) takes its own devices and leaves the planted.
    env.hierarchies(ns)
        .delete(name, &DeleteParams::default())
        .await?;
    common::wait_until_gone(env, ns, name).await?;
    common::wait_until_absent(admin, &["fg-top", "fg-line"]).await?;
    let survived = {
        let mut n = 0;
        for id in planted {
            n += usize::from(admin.device(id).await?.is_some());
        }
        n
    };
    println!(
        "forged tags: {resyncs} resyncs and the hierarchy's deletion: {survived} of {} planted \
         devices survive, 2 of 2 own devices deleted",
        planted.len()
    );
    ensure!(survived == planted.len(), "a planted device was deleted");
    Ok(())
}

async fn futures_tags(env: &Env, ids: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for id in ids {
        out.push(tags_of(env, id).await?);
    }
    Ok(out)
}

async fn detached_then_recreated_takes_its_devices_back(env: &Env) -> anyhow::Result<()> {
    let (ns, name) = ("readopt", "tutorial");
    env.namespace(ns).await?;
    // The tutorial (three layers, two deployments), deleted with Detach and applied again.
    let yaml = common::example("tutorial.yaml").replace(
        "spec:\n",
        "spec:\n  policy: {deletion: Detach, resyncInterval: 10s}\n",
    );
    env.apply(ns, &yaml).await?;
    env.wait_condition(ns, name, "Ready", "True").await?;
    let first_uid = uid_of(env, ns, name).await?;
    let first_configurations = common::configurations(env, &first_uid).await?;
    ensure!(
        !first_configurations.is_empty(),
        "the tutorial has configurations"
    );
    let h = env.hierarchies(ns).get(name).await?;
    let ids: Vec<String> = h.spec.devices.iter().map(|d| d.id.clone()).collect();
    let mut keys = Vec::new();
    for id in &ids {
        keys.push(env.hub.admin.device_keys(id).await?);
    }

    env.hierarchies(ns)
        .delete(name, &DeleteParams::default())
        .await?;
    common::wait_until_gone(env, ns, name).await?;
    env.apply(ns, &yaml).await?;
    let h = env.wait_condition(ns, name, "Ready", "True").await?;
    let second_uid = uid_of(env, ns, name).await?;
    ensure!(first_uid != second_uid, "the hierarchy was not re-created");
    let conflicts = h
        .status
        .as_ref()
        .map(|s| {
            s.devices
                .iter()
                .filter(|d| d.state == edge_hierarchy_operator::api::DeviceState::Conflict)
                .count()
        })
        .unwrap_or_default();
    ensure!(
        conflicts == 0,
        "{conflicts} devices are Conflicts after re-creation"
    );
    assert_hub_matches(env, ns, name).await?;
    let mut same_keys = 0;
    for (id, before) in ids.iter().zip(&keys) {
        same_keys += usize::from(&env.hub.admin.device_keys(id).await? == before);
    }
    // The earlier hierarchy's configurations target tags no device carries any more: proven
    // its own, they are deleted rather than left to fill the hub's 100.
    let left_over = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(500),
        "the earlier hierarchy's configurations to be deleted",
        || async {
            let left = common::configurations(env, &first_uid).await.ok()?;
            left.is_empty().then_some(left.len())
        },
    )
    .await?;
    let current = common::configurations(env, &second_uid).await?;
    println!(
        "detach, then re-create: {} of {} devices taken back by their proof, {same_keys} with \
         their keys unchanged, 0 conflicts; configurations: {} of the earlier hierarchy left, \
         {} of this one",
        ids.len(),
        ids.len(),
        left_over,
        current.len()
    );
    ensure!(same_keys == ids.len(), "a device's keys changed");
    ensure!(
        current.len() == first_configurations.len(),
        "{} configurations now, {} before",
        current.len(),
        first_configurations.len()
    );

    // A device removed from the spec under Detach stays in the hub, and so do its Secrets.
    let removed = "    - id: lower-layer\n      parent: top-layer\n      deployment: lower-layer\n";
    ensure!(yaml.contains(removed), "the tutorial has lower-layer");
    let secrets_of = |id: &'static str| async move {
        let api: Api<Secret> = Api::namespaced(env.client.clone(), ns);
        let selector = format!(
            "edgehierarchy.dev/hierarchy={name},edgehierarchy.dev/device={}",
            edge_hierarchy_operator::names::device_label_value(id)
        );
        api.list(&kube::api::ListParams::default().labels(&selector))
            .await
            .map(|l| l.items.len())
    };
    let before = secrets_of("lower-layer").await?;
    ensure!(
        before >= 2,
        "lower-layer has {before} Secrets, expected certificates and a bundle"
    );
    env.apply(ns, &yaml.replace(removed, "")).await?;
    env.wait_condition(ns, name, "Ready", "True").await?;
    env.resync(ns, name).await?;
    let after = secrets_of("lower-layer").await?;
    println!("a device removed under Detach: {after} of its {before} Secrets kept");
    ensure!(
        after == before,
        "Secrets of a device removed under Detach were deleted"
    );
    ensure!(
        env.hub.admin.device("lower-layer").await?.is_some(),
        "Detach deleted a device from the hub"
    );
    Ok(())
}

async fn a_namespace_deleted_with_its_hub_secret_goes_away(env: &Env) -> anyhow::Result<()> {
    let (ns, name) = ("doomed", "plant");
    env.namespace(ns).await?;
    let devices = "    - {id: dm-top}\n    - {id: dm-line, parent: dm-top}\n";
    env.apply(ns, &hierarchy_yaml(name, "", devices)).await?;
    env.wait_condition(ns, name, "Ready", "True").await?;
    // The hub Secret and the namespace at once, as `kubectl delete namespace` does to both.
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let delete = DeleteParams::default();
    let (secret, namespace) = tokio::join!(
        secrets.delete("iothub-service", &delete),
        namespaces.delete(ns, &delete)
    );
    secret?;
    namespace?;
    let started = std::time::Instant::now();
    wait_until(
        NAMESPACE_GONE,
        Duration::from_millis(500),
        "the namespace to be gone",
        || async { matches!(namespaces.get_opt(ns).await, Ok(None)).then_some(()) },
    )
    .await
    .with_context(|| {
        std::fs::read_to_string(env.dir.path().join("operator.log")).unwrap_or_default()
    })?;
    let mut left = 0;
    for id in ["dm-top", "dm-line"] {
        left += usize::from(env.hub.admin.device(id).await?.is_some());
    }
    println!(
        "namespace with its hub Secret deleted at once: gone after {:.1} s; {left} of 2 devices \
         left in the hub (the Warning HubCredentialsGone names them when the Secret went first)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_cannot_be_forged_and_deletions_finish() -> anyhow::Result<()> {
    let env = Env::start(&["--strict"]).await?;
    let mut checks = Checks::new();
    checks
        .run(
            "a forged tag survives resyncs and the hierarchy's deletion",
            forged_tags_are_never_enough(&env),
        )
        .await;
    checks
        .run(
            "Detach, then re-create: the devices are taken back",
            detached_then_recreated_takes_its_devices_back(&env),
        )
        .await;
    checks
        .run(
            "a namespace deleted with its hub Secret goes away",
            a_namespace_deleted_with_its_hub_secret_goes_away(&env),
        )
        .await;
    checks.finish()
}
