//! Private-registry credentials from Secrets (issue 10) with the operator as its own process:
//! `spec.edge.agentAuth` becomes `[agent.config.auth]` in every bundle (`$upstream:443` below
//! the top layer), `registryCredentials` reach the hub's configurations, a rotated password
//! follows into both, a missing key stalls naming the field, and the passwords appear nowhere
//! they should not.

mod common;

use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::leaks::LeakScan;
use common::{Env, configurations, example};
use e2e_harness::Checks;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const NS: &str = "reg";
const NAME: &str = "tutorial";
const SECRET: &str = "registry-pull";
const REGISTRY: &str = "myregistry.azurecr.io";
const FIRST: &str = "e2e-Registry-Pass-one-7Qx";
const SECOND: &str = "e2e-Registry-Pass-two-9Zk";

/// The tutorial pulling its agent from a private registry, both deployments with a credential
/// for it, all from Secret `registry-pull`.
fn hierarchy() -> String {
    let edge = format!(
        "  edge:\n    agentImage: {REGISTRY}/azureiotedge-agent:1.5\n    upstreamRegistries: [mcr.microsoft.com, {REGISTRY}]\n    agentAuth:\n      serverAddress: {REGISTRY}\n      secretRef: {{name: {SECRET}}}\n  devices:\n"
    );
    let credential = format!(
        "      priority: 10\n      registryCredentials:\n        - {{name: acr, address: {REGISTRY}, secretRef: {{name: {SECRET}}}}}\n"
    );
    example("tutorial.yaml")
        .replacen("  devices:\n", &edge, 1)
        .replace("      priority: 10\n", &credential)
}

/// Creates or updates the Secret by server-side apply, as `kubectl apply` would. The keys go
/// in `data`: a key left out of `stringData` would not be removed (it is never stored as such).
async fn apply_secret(env: &Env, data: &[(&str, &str)]) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), NS);
    let data: BTreeMap<&str, String> = data.iter().map(|(k, v)| (*k, STANDARD.encode(v))).collect();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET},
        "type": "Opaque",
        "data": data,
    });
    secrets
        .patch(
            SECRET,
            &PatchParams::apply("e2e-test").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// Each device's bundle config.toml, parsed, by device id.
async fn bundle_configs(env: &Env) -> anyhow::Result<BTreeMap<String, toml::Table>> {
    let api: Api<Secret> = Api::namespaced(env.client.clone(), NS);
    let selector = format!("edgehierarchy.dev/hierarchy={NAME},edgehierarchy.dev/component=bundle");
    let mut out = BTreeMap::new();
    for s in api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let id = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("edgehierarchy.dev/device-id"))
            .context("bundle without device id")?
            .clone();
        let bytes = s
            .data
            .as_ref()
            .and_then(|d| d.get("config.toml"))
            .context("bundle without config.toml")?;
        out.insert(id, String::from_utf8(bytes.0.clone())?.parse()?);
    }
    Ok(out)
}

/// `[agent.config.auth]` of a config.toml as (serveraddress, username, password).
fn agent_auth(config: &toml::Table) -> Option<(String, String, String)> {
    let auth = config.get("agent")?.get("config")?.get("auth")?;
    let field = |k: &str| auth.get(k)?.as_str().map(str::to_string);
    Some((
        field("serveraddress")?,
        field("username")?,
        field("password")?,
    ))
}

/// The `acr` credential of the hierarchy's configuration of `deployment`, once there is exactly
/// one such configuration.
async fn hub_credential(env: &Env, uid: &str, deployment: &str) -> Option<Value> {
    let prefix = format!("{NAME}-{deployment}-");
    let configs = configurations(env, uid).await.ok()?;
    let mut matching = configs.iter().filter(|(id, _)| id.starts_with(&prefix));
    let (_, config) = matching.next()?;
    if matching.next().is_some() {
        return None;
    }
    config
        .pointer("/content/modulesContent/$edgeAgent/properties.desired/runtime/settings/registryCredentials/acr")
        .cloned()
}

async fn uid(env: &Env) -> anyhow::Result<String> {
    Ok(env
        .hierarchies(NS)
        .get(NAME)
        .await?
        .metadata
        .uid
        .unwrap_or_default())
}

/// Waits until both bundles and both configurations carry `password` (`label` names it in a
/// failure, which must not show the password itself).
async fn wait_for_password(env: &Env, password: &str, label: &str) -> anyhow::Result<()> {
    let uid = uid(env).await?;
    let what = format!("bundles and configurations with the {label} password");
    common::wait_for(env, &what, || async {
        let configs = bundle_configs(env).await.ok()?;
        let top = agent_auth(configs.get("top-layer")?)?;
        let lower = agent_auth(configs.get("lower-layer")?)?;
        let expected_top = (REGISTRY.to_string(), "puller".into(), password.to_string());
        let expected_lower = (
            "$upstream:443".to_string(),
            "puller".into(),
            password.into(),
        );
        if top != expected_top || lower != expected_lower {
            return None;
        }
        let top = hub_credential(env, &uid, "top-layer").await?;
        let lower = hub_credential(env, &uid, "lower-layer").await?;
        let expected =
            |address: &str| json!({"username": "puller", "password": password, "address": address});
        (top == expected(REGISTRY) && lower == expected("$upstream:443")).then_some(())
    })
    .await
}

async fn credentials_reach_bundles_and_hub(env: &Env) -> anyhow::Result<()> {
    env.namespace(NS).await?;
    apply_secret(env, &[("username", "puller"), ("password", FIRST)]).await?;
    env.apply(NS, &hierarchy()).await?;
    env.wait_condition(NS, NAME, "Ready", "True").await?;
    wait_for_password(env, FIRST, "first").await?;
    // The spec holds no password, only the Secret's name.
    let h = env.hierarchies(NS).get(NAME).await?;
    ensure!(!serde_json::to_string(&h)?.contains(FIRST));
    Ok(())
}

async fn a_rotated_password_follows(env: &Env) -> anyhow::Result<()> {
    let uid = uid(env).await?;
    let before: Vec<String> = configurations(env, &uid).await?.into_keys().collect();
    let revisions = |s: &edge_hierarchy_operator::api::EdgeHierarchyStatus| -> Vec<u32> {
        s.devices
            .iter()
            .filter_map(|d| d.bundle.as_ref().map(|b| b.revision))
            .collect()
    };
    let old = revisions(&env.status(NS, NAME).await?);
    // Only the Secret changes: its watch brings the change in, no poke.
    apply_secret(env, &[("username", "puller"), ("password", SECOND)]).await?;
    wait_for_password(env, SECOND, "rotated").await?;
    let after: Vec<String> = configurations(env, &uid).await?.into_keys().collect();
    ensure!(
        after.iter().all(|id| !before.contains(id)),
        "configurations kept their ids across a password change: {before:?} -> {after:?}"
    );
    let status = env
        .wait_status(NS, NAME, "bundle revisions to go up", |s| {
            revisions(s).iter().zip(&old).all(|(new, old)| new > old)
        })
        .await?;
    ensure!(revisions(&status).len() == 2, "{:?}", status.devices);
    Ok(())
}

async fn a_missing_key_stalls_naming_the_field(env: &Env) -> anyhow::Result<()> {
    let writes = common::stat(&env.hub.admin.stats().await?, "writeCalls");
    apply_secret(env, &[("username", "puller")]).await?;
    let h = env.wait_condition(NS, NAME, "Stalled", "True").await?;
    let stalled = common::condition(&h, "Stalled")?;
    ensure!(stalled.reason == "InvalidSpec", "{stalled:?}");
    ensure!(
        stalled.message.contains(&format!(
            "spec.edge.agentAuth.secretRef.passwordKey: Secret \"{SECRET}\" has no key \"password\""
        )) && stalled.message.contains(
            "spec.deployments[lower-layer].registryCredentials[acr].secretRef.passwordKey"
        ),
        "{}",
        stalled.message
    );
    ensure!(
        common::stat(&env.hub.admin.stats().await?, "writeCalls") == writes,
        "a missing registry password caused hub writes"
    );
    // Putting the key back is picked up through the Secret watch.
    apply_secret(env, &[("username", "puller"), ("password", SECOND)]).await?;
    env.wait_condition(NS, NAME, "Stalled", "False").await?;
    env.wait_condition(NS, NAME, "Ready", "True").await?;
    Ok(())
}

async fn no_password_leaks(env: &Env) -> anyhow::Result<()> {
    LeakScan::new(env)
        .look_for(
            "a registry password",
            [FIRST.to_string(), SECOND.to_string()],
        )
        .run(&[NS])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reads_registry_credentials_from_secrets() -> anyhow::Result<()> {
    let env = Env::start(&["--strict"]).await?;
    let mut checks = Checks::new();
    if checks
        .run(
            "agentAuth and registryCredentials reach the bundles and the hub",
            credentials_reach_bundles_and_hub(&env),
        )
        .await
    {
        checks
            .run(
                "a rotated password follows into bundles and configurations",
                a_rotated_password_follows(&env),
            )
            .await;
        checks
            .run(
                "a missing password key stalls with InvalidSpec naming the field",
                a_missing_key_stalls_naming_the_field(&env),
            )
            .await;
    }
    checks
        .run(
            "no registry password in logs, Events or status",
            no_password_leaks(&env),
        )
        .await;
    checks.finish()
}
