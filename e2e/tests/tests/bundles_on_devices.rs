//! Bundles as devices use them (issue 12): the operator, the emulator and simulated devices
//! (e2e/edge-sim as its own process, reading the bundle Secrets) against a real control plane.
//!
//! - A leaf device connects through its parent with its leaf bundle: its messages reach the hub
//!   only if the connection string's `GatewayHostName` resolves to the parent, the bundle's root
//!   verifies the parent's edgeHub certificate, and the hub accepts the leaf's own SAS token.
//! - SAS keys changed in the hub outside the operator (as the portal does, through the device
//!   update API): the bundles follow with a new revision and a `SasKeyChanged` Event, and the
//!   simulated devices authenticate again with them.
//! - Under `reconcile: Observe` a renewed X.509 identity the hub never gets stays out of the
//!   bundle; back under Manage the hub gets the thumbprint and the bundle follows.

mod common;

use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use base64::Engine;
use common::sim::{fast, sim_log, start_sim};
use common::{Env, hierarchy_yaml, wait_for};
use e2e_harness::Checks;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const NAMESPACE: &str = "iot";
const NAME: &str = "tutorial";
const LEAF: &str = "sensor-leaf";

/// The tutorial with hostnames the leaf's connection string can name, and a leaf device below
/// the lower layer.
fn tutorial_with_leaf() -> String {
    fast("tutorial.yaml")
        .replace(
            "    - id: top-layer\n",
            "    - id: top-layer\n      hostname: top-layer.edge.sim\n",
        )
        .replace(
            "    - id: lower-layer\n      parent: top-layer\n      deployment: lower-layer\n",
            &format!(
                "    - id: lower-layer\n      parent: top-layer\n      deployment: lower-layer\n      hostname: lower-layer.edge.sim\n    - id: {LEAF}\n      parent: lower-layer\n      type: Leaf\n"
            ),
        )
}

/// Bundle Secrets of a hierarchy by device id.
async fn bundles(
    env: &Env,
    namespace: &str,
    name: &str,
) -> anyhow::Result<BTreeMap<String, Secret>> {
    env.device_secrets(namespace, name, "bundle").await
}

fn file(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn revision(secret: &Secret) -> u32 {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("edgehierarchy.dev/revision")?.parse().ok())
        .unwrap_or(0)
}

/// Messages the emulator accepted from a sender (`device` or `device/module`).
async fn accepted(env: &Env, sender: &str) -> anyhow::Result<u64> {
    let stats = env.hub.admin.stats().await?;
    Ok(stats["telemetry"]["bySender"][sender].as_u64().unwrap_or(0))
}

/// Waits until the emulator accepted more than `after` messages from `sender`.
async fn wait_accepted(env: &Env, sender: &str, after: u64) -> anyhow::Result<u64> {
    wait_for(
        env,
        &format!("the hub to accept messages from {sender} (more than {after})"),
        || async {
            let n = accepted(env, sender).await.ok()?;
            (n > after).then_some(n)
        },
    )
    .await
    .with_context(|| sim_log(env, NAMESPACE))
}

async fn leaf_connects_through_its_parent(env: &Env) -> anyhow::Result<()> {
    let secrets = wait_for(env, "a leaf bundle", || async {
        let all = bundles(env, NAMESPACE, NAME).await.ok()?;
        all.contains_key(LEAF).then_some(all)
    })
    .await?;
    let leaf = &secrets[LEAF];
    let connection = file(leaf, "connection-string.txt").context("connection-string.txt")?;
    ensure!(
        connection.contains(&format!(";DeviceId={LEAF};"))
            && connection
                .trim_end()
                .ends_with(";GatewayHostName=lower-layer.edge.sim"),
        "{connection}"
    );
    let root = file(leaf, "iotedge_config_cli_root.pem").context("trust bundle")?;
    ensure!(root.contains("BEGIN CERTIFICATE"), "{root}");
    ensure!(file(leaf, "README.md").is_some_and(|r| r.contains("GatewayHostName")));
    ensure!(
        file(leaf, "config.toml").is_none(),
        "a leaf bundle has no config.toml"
    );
    let n = wait_accepted(env, LEAF, 0).await?;
    println!("the leaf's messages reached the hub through lower-layer: {n}");
    Ok(())
}

/// Replaces the device's primary key in the hub, as the portal's "regenerate" does.
async fn regenerate_primary_key(env: &Env, id: &str, seed: u8) -> anyhow::Result<String> {
    let key = base64::engine::general_purpose::STANDARD.encode([seed; 32]);
    let new = key.clone();
    env.hub
        .admin
        .edit_device(id, move |device| {
            device["authentication"]["symmetricKey"]["primaryKey"] = Value::String(new);
        })
        .await?;
    Ok(key)
}

async fn keys_changed_in_the_portal_reach_the_bundles(env: &Env) -> anyhow::Result<()> {
    let before = bundles(env, NAMESPACE, NAME).await?;
    for (id, sender, seed) in [
        // The sensor module has no module identity in the hub, so its messages go on the
        // device route (edge-sim does what edgeHub would with a device credential).
        ("lower-layer", "lower-layer", 7u8),
        (LEAF, LEAF, 9u8),
    ] {
        let old_revision = revision(&before[id]);
        let key = regenerate_primary_key(env, id, seed).await?;
        let sent_before = accepted(env, sender).await?;
        // The operator learns of it on its next sync (the device's etag moved).
        let secret = wait_for(env, &format!("{id}'s bundle with the new key"), || async {
            env.poke(NAMESPACE, NAME).await.ok()?;
            let secret = bundles(env, NAMESPACE, NAME).await.ok()?.remove(id)?;
            let text =
                file(&secret, "config.toml").or_else(|| file(&secret, "connection-string.txt"))?;
            text.contains(&format!("SharedAccessKey={key}"))
                .then_some(secret)
        })
        .await?;
        ensure!(
            revision(&secret) == old_revision + 1,
            "{id}: revision {} after {old_revision}",
            revision(&secret)
        );
        let event = env
            .wait_event(NAMESPACE, NAME, "SasKeyChanged", &format!("{id:?}"))
            .await?;
        ensure!(!event.contains(&key), "the Event shows the key: {event}");
        // The simulated device installs the new bundle and the hub accepts it again.
        let n = wait_accepted(env, sender, sent_before).await?;
        println!(
            "{id}: new key in bundle revision {}; hub accepts {sender} again ({n})",
            revision(&secret)
        );
    }
    // A resync with no change rewrites nothing, and reads no key from the hub: each is in its
    // bundle, the leaf's too (a registry read per device per resync would eat the quota).
    let settled = bundles(env, NAMESPACE, NAME).await?;
    let before = env.hub.admin.stats().await?;
    env.resync(NAMESPACE, NAME).await?;
    let after = env.hub.admin.stats().await?;
    let registry = |stats: &Value| common::stat(stats, "registryOperations");
    ensure!(
        registry(&after) == registry(&before),
        "a resync spent {} registry operations",
        registry(&after) - registry(&before)
    );
    let again = bundles(env, NAMESPACE, NAME).await?;
    for (id, secret) in &settled {
        ensure!(
            revision(&again[id]) == revision(secret),
            "{id}: rewritten on a resync without a change"
        );
    }
    Ok(())
}

const OBSERVED: &str = "observed";

fn x509_two(policy: &str) -> String {
    hierarchy_yaml(
        OBSERVED,
        policy,
        "    - {id: ob-top}\n    - {id: ob-low, parent: ob-top}\n",
    )
    .replace("  devices:\n", "  authentication: X509\n  devices:\n")
}

async fn certificate_secret(env: &Env, id: &str) -> anyhow::Result<Secret> {
    let api: Api<Secret> = Api::namespaced(env.client.clone(), "observe");
    let selector =
        format!("edgehierarchy.dev/hierarchy={OBSERVED},edgehierarchy.dev/component=certs");
    api.list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .find(|s| {
            s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("edgehierarchy.dev/device-id"))
                .is_some_and(|d| d == id)
        })
        .with_context(|| format!("no certificate Secret of {id}"))
}

async fn hub_thumbprint(env: &Env, id: &str) -> anyhow::Result<(String, String)> {
    let device = env.hub.admin.device(id).await?.context("device")?;
    let t = |k: &str| {
        device["authentication"]["x509Thumbprint"][k]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    Ok((t("primaryThumbprint"), t("secondaryThumbprint")))
}

async fn observe_never_bundles_an_identity_the_hub_lacks(env: &Env) -> anyhow::Result<()> {
    env.namespace("observe").await?;
    env.apply("observe", &x509_two("")).await?;
    env.wait_condition("observe", OBSERVED, "Ready", "True")
        .await?;
    let first = bundles(env, "observe", OBSERVED).await?;
    let identity_file = "ob-low.hub-auth.cert.pem";
    let identity = file(&first["ob-low"], identity_file).context("identity in the bundle")?;
    let thumbprints = hub_thumbprint(env, "ob-low").await?;

    env.apply("observe", &x509_two(", reconcile: Observe"))
        .await?;
    env.resync("observe", OBSERVED).await?;
    // Ask for the lower device's certificates to be re-issued.
    let certs = certificate_secret(env, "ob-low").await?;
    let current = certs
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("edgehierarchy.dev/revision"))
        .cloned()
        .context("certificate revision")?;
    let api: Api<Secret> = Api::namespaced(env.client.clone(), "observe");
    api.patch(
        certs.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"metadata": {"annotations": {"edgehierarchy.dev/renew-revision": current}}}),
        ),
    )
    .await?;
    let status = env
        .wait_status("observe", OBSERVED, "the withheld bundle reported", |s| {
            s.devices.iter().any(|d| {
                d.id == "ob-low"
                    && d.message
                        .as_deref()
                        .is_some_and(|m| m.contains("bundle kept at revision"))
            })
        })
        .await?;
    let message = status
        .devices
        .iter()
        .find(|d| d.id == "ob-low")
        .and_then(|d| d.message.clone())
        .unwrap_or_default();
    ensure!(message.contains("Observe"), "{message}");
    let renewed = certificate_secret(env, "ob-low").await?;
    ensure!(
        file(&renewed, "identity.crt") != file(&certs, "identity.crt"),
        "the identity was not re-issued"
    );
    // A few more syncs: the bundle keeps the identity the hub knows, and the hub is untouched.
    for _ in 0..2 {
        env.resync("observe", OBSERVED).await?;
    }
    let kept = bundles(env, "observe", OBSERVED).await?;
    ensure!(
        file(&kept["ob-low"], identity_file).as_deref() == Some(identity.as_str()),
        "the bundle got an identity the hub does not have"
    );
    ensure!(revision(&kept["ob-low"]) == revision(&first["ob-low"]));
    ensure!(hub_thumbprint(env, "ob-low").await? == thumbprints);
    println!("under Observe: {message}");

    // Back under Manage the hub gets the new thumbprint, then the bundle follows.
    env.apply("observe", &x509_two("")).await?;
    let secret = wait_for(env, "the bundle with the renewed identity", || async {
        env.poke("observe", OBSERVED).await.ok()?;
        let secret = bundles(env, "observe", OBSERVED)
            .await
            .ok()?
            .remove("ob-low")?;
        (file(&secret, identity_file)? != identity).then_some(secret)
    })
    .await?;
    let (primary, secondary) = hub_thumbprint(env, "ob-low").await?;
    ensure!(
        (primary, secondary) != thumbprints,
        "the hub's thumbprints did not change"
    );
    println!("under Manage: bundle revision {}", revision(&secret));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_on_simulated_devices() -> anyhow::Result<()> {
    let env = Env::start(&["--strict"]).await?;
    env.namespace(NAMESPACE).await?;
    env.apply(NAMESPACE, &tutorial_with_leaf()).await?;
    env.wait_condition(NAMESPACE, NAME, "Ready", "True").await?;
    let _sim = start_sim(&env, NAMESPACE, NAME)?;
    let mut checks = Checks::new();
    if checks
        .run(
            "a simulated leaf connects through its parent with its bundle",
            leaf_connects_through_its_parent(&env),
        )
        .await
    {
        checks
            .run(
                "SAS keys changed in the portal reach the bundles, with an Event",
                keys_changed_in_the_portal_reach_the_bundles(&env),
            )
            .await;
    }
    checks
        .run(
            "under Observe no bundle carries an identity the hub lacks",
            observe_never_bundles_an_identity_the_hub_lacks(&env),
        )
        .await;
    checks.finish()
}
