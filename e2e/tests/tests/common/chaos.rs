//! What the chaos suite (`tests/chaos.rs`) counts after each fault: devices lost, duplicated
//! and orphaned, and bundles that still authenticate. One function, [`tally`], counts for every
//! case, from what a case's [`Witness`] saw while the fault was on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use e2e_harness::wait_until;
use edge_hierarchy_operator::api::DeviceType;
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use sha2::Sha256;

use super::sim::start_sim;
use super::{Env, HubAdmin, assert_hub_matches, configurations};

const HIERARCHY_LABEL: &str = "edgehierarchy.dev/hierarchy";
const COMPONENT_LABEL: &str = "edgehierarchy.dev/component";
const DEVICE_ID_ANNOTATION: &str = "edgehierarchy.dev/device-id";
/// How long the chaos emulator's twin queries lag writes (`--query-lag-ms` of
/// [`super::HARSH_TIMING`]), plus a second.
const QUERY_LAG: Duration = Duration::from_secs(6);

/// The figures of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Spec devices missing from the hub.
    pub lost: usize,
    /// Identities made twice: a device re-created (its generationId changed while the case
    /// ran, so an earlier bundle no longer names it), a second bundle or certificate Secret for
    /// one device, a second configuration for one deployment and layer variant.
    pub duplicated: usize,
    /// What belongs to nothing in the spec: hub devices tagged for the hierarchy but not in its
    /// spec, operator Secrets of no spec device, configurations of no spec deployment.
    pub orphaned: usize,
    /// Edge devices whose first bundle (as it was first written) and current bundle both
    /// authenticate to the hub with their SAS key, and whose current bundle edge-sim installed
    /// and reported `$edgeAgent` with.
    pub authenticated: usize,
    /// Edge devices in the spec (each must have a bundle).
    pub bundles: usize,
    /// What was found, one line per finding (empty when all is well).
    pub findings: Vec<String>,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lost={} duplicated={} orphaned={} authenticated={}/{}",
            self.lost, self.duplicated, self.orphaned, self.authenticated, self.bundles
        )
    }
}

impl Tally {
    /// Prints the case's line and fails unless nothing was lost, duplicated or orphaned and
    /// every bundle authenticates.
    pub fn print_and_check(&self, case: &str) -> anyhow::Result<()> {
        eprintln!("chaos[{case}]: {self}");
        for finding in &self.findings {
            eprintln!("chaos[{case}]:   {finding}");
        }
        anyhow::ensure!(
            self.lost == 0
                && self.duplicated == 0
                && self.orphaned == 0
                && self.authenticated == self.bundles,
            "chaos[{case}]: {self}; findings:\n{}",
            self.findings.join("\n")
        );
        Ok(())
    }
}

/// What a device looked like the first time the witness saw it.
#[derive(Debug, Clone, Default)]
struct FirstSeen {
    /// The bundle's `config.toml` connection string.
    connection_string: Option<String>,
    /// The hub's generationId.
    generation: Option<String>,
}

#[derive(Default)]
struct Seen {
    devices: BTreeMap<String, FirstSeen>,
    /// Devices whose generationId the witness saw change.
    recreated: BTreeSet<String>,
    samples: usize,
}

/// Watches one hierarchy while a case runs and keeps what it saw first, so that [`tally`] can
/// tell whether a bundle handed out early still authenticates and whether a device was
/// re-created: every version of the bundle Secrets (a watch, which resumes by itself after an
/// apiserver or etcd restart), and every 2 s the hub's generationIds of the hierarchy's
/// devices (a query; skipped while the hub is down).
pub struct Witness {
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Witness {
    pub fn start(env: &Env, namespace: &str, name: &str) -> Self {
        use futures::StreamExt as _;
        use kube::runtime::{WatchStreamExt as _, watcher};
        let seen = Arc::new(Mutex::new(Seen::default()));
        let secrets: Api<Secret> = Api::namespaced(env.client.clone(), namespace);
        let selector = format!("{HIERARCHY_LABEL}={name},{COMPONENT_LABEL}=bundle");
        let bundles_seen = seen.clone();
        let bundles = tokio::spawn(async move {
            let stream = watcher(secrets, watcher::Config::default().labels(&selector))
                .default_backoff()
                .applied_objects();
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                let Ok(secret) = event else { continue };
                let (Some(id), Some(cs)) = (device_id(&secret), connection_string(&secret)) else {
                    continue;
                };
                let mut seen = bundles_seen.lock().unwrap();
                let entry = seen.devices.entry(id).or_default();
                entry.connection_string.get_or_insert(cs);
            }
        });
        let admin = env.hub.admin.clone();
        let sql = generation_query(namespace, name);
        let hub_seen = seen.clone();
        let hub = tokio::spawn(async move {
            loop {
                if let Ok(rows) = admin.query(&sql).await {
                    let mut seen = hub_seen.lock().unwrap();
                    seen.samples += 1;
                    for row in rows {
                        let (Some(id), Some(generation)) = (
                            row.get("deviceId").and_then(Value::as_str),
                            row.get("generationId").and_then(Value::as_str),
                        ) else {
                            continue;
                        };
                        let entry = seen.devices.entry(id.to_string()).or_default();
                        match &entry.generation {
                            None => entry.generation = Some(generation.to_string()),
                            Some(first) if first != generation => {
                                seen.recreated.insert(id.to_string());
                            }
                            Some(_) => {}
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        Self {
            seen,
            tasks: vec![bundles, hub],
        }
    }

    /// How many bundles the witness has seen so far.
    pub fn bundles_seen(&self) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.devices
            .values()
            .filter(|d| d.connection_string.is_some())
            .count()
    }

    fn stop(self) -> Seen {
        for task in &self.tasks {
            task.abort();
        }
        Arc::try_unwrap(self.seen)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|shared| {
                let seen = shared.lock().unwrap();
                Seen {
                    devices: seen.devices.clone(),
                    recreated: seen.recreated.clone(),
                    samples: seen.samples,
                }
            })
    }
}

fn generation_query(namespace: &str, name: &str) -> String {
    format!(
        "SELECT deviceId, generationId FROM devices WHERE tags.edgeHierarchy.namespace = '{namespace}' AND tags.edgeHierarchy.name = '{name}'"
    )
}

fn device_id(secret: &Secret) -> Option<String> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(DEVICE_ID_ANNOTATION)
        .cloned()
}

/// `[provisioning] connection_string` of a bundle Secret's `config.toml`.
fn connection_string(secret: &Secret) -> Option<String> {
    let bytes = &secret.data.as_ref()?.get("config.toml")?.0;
    let config: toml::Value = toml::from_str(std::str::from_utf8(bytes).ok()?).ok()?;
    config
        .get("provisioning")?
        .get("connection_string")?
        .as_str()
        .map(str::to_string)
}

/// Whether a device connection string (`HostName=..;DeviceId=..;SharedAccessKey=..`)
/// authenticates: a device SAS token signed with its key reads the device's own twin on the
/// emulator's device endpoint. The key never leaves this function.
async fn authenticates(http: &reqwest::Client, connection_string: &str) -> anyhow::Result<bool> {
    let part = |name: &str| {
        connection_string
            .split(';')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .with_context(|| format!("the bundle's connection string has no {name}"))
    };
    let (host, device, key) = (
        part("HostName")?,
        part("DeviceId")?,
        part("SharedAccessKey")?,
    );
    let key = STANDARD
        .decode(key)
        .context("the bundle's SharedAccessKey is not base64")?;
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 600;
    let resource =
        utf8_percent_encode(&format!("{host}/devices/{device}"), NON_ALPHANUMERIC).to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{resource}\n{expiry}").as_bytes());
    let signature = STANDARD.encode(mac.finalize().into_bytes());
    let token = format!(
        "SharedAccessSignature sr={resource}&sig={}&se={expiry}",
        utf8_percent_encode(&signature, NON_ALPHANUMERIC)
    );
    let url = format!(
        "https://{host}/devices/{}/twin?api-version=2021-04-12",
        utf8_percent_encode(device, NON_ALPHANUMERIC)
    );
    let status = http
        .get(url)
        .header("Authorization", token)
        .send()
        .await?
        .status();
    Ok(status.is_success())
}

/// Counts the figures of one case for hierarchy `namespace/name`, once it has converged and
/// the fault is over. `witness` is the one started before the fault.
///
/// Besides the figures, it checks the hub against the spec with [`assert_hub_matches`] (parents,
/// capabilities, ownership tags), and it runs edge-sim from the current bundles until every
/// Edge device has reported `$edgeAgent` with its bundle's credentials.
pub async fn tally(
    env: &Env,
    namespace: &str,
    name: &str,
    witness: Witness,
) -> anyhow::Result<Tally> {
    // What the witness saw last must be at least as new as the converged state.
    tokio::time::sleep(QUERY_LAG).await;
    let seen = witness.stop();
    let h = env.hierarchies(namespace).get(name).await?;
    let uid = h.metadata.uid.clone().unwrap_or_default();
    let spec_ids: BTreeSet<&str> = h.spec.devices.iter().map(|d| d.id.as_str()).collect();
    let edge_ids: BTreeSet<&str> = h
        .spec
        .devices
        .iter()
        .filter(|d| d.device_type == DeviceType::Edge)
        .map(|d| d.id.as_str())
        .collect();
    let mut findings = Vec::new();
    let admin: &HubAdmin = &env.hub.admin;

    // Lost: spec devices the hub does not have (read with GETs, which do not lag).
    let twins = admin
        .twins(&spec_ids.iter().copied().collect::<Vec<_>>())
        .await?;
    let lost: Vec<&str> = spec_ids
        .iter()
        .copied()
        .filter(|id| !twins.contains_key(*id))
        .collect();
    if !lost.is_empty() {
        findings.push(format!("lost (not in the hub): {lost:?}"));
    }

    // Duplicated, part 1: devices re-created while the case ran.
    let mut recreated: BTreeSet<String> = seen.recreated.clone();
    for (id, twin) in &twins {
        let now = twin.get("generationId").and_then(Value::as_str);
        if let Some(first) = seen.devices.get(id).and_then(|d| d.generation.as_deref())
            && now.is_some_and(|now| now != first)
        {
            recreated.insert(id.clone());
        }
    }
    if !recreated.is_empty() {
        findings.push(format!(
            "re-created (generationId changed during the case): {recreated:?}"
        ));
    }
    let mut duplicated = recreated.len();

    // Orphaned hub devices: tagged for this hierarchy, not in its spec. The query lags writes;
    // the wait above covers the lag.
    let rows = admin.query(&generation_query(namespace, name)).await?;
    let orphan_devices: Vec<String> = rows
        .iter()
        .filter_map(|r| r.get("deviceId").and_then(Value::as_str))
        .filter(|id| !spec_ids.contains(id))
        .map(str::to_string)
        .collect();
    if !orphan_devices.is_empty() {
        findings.push(format!("orphaned hub devices: {orphan_devices:?}"));
    }
    let mut orphaned = orphan_devices.len();

    // The operator's Secrets: one bundle per device (Edge and Leaf bundles), one certificate
    // Secret per device that has one, none for a device that is not in the spec.
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), namespace);
    let list = secrets
        .list(&ListParams::default().labels(&format!("{HIERARCHY_LABEL}={name}")))
        .await?;
    let mut per_device: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut current_bundles: BTreeMap<String, String> = BTreeMap::new();
    for secret in &list.items {
        let component = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(COMPONENT_LABEL))
            .cloned()
            .unwrap_or_default();
        if component != "bundle" && component != "certs" {
            continue;
        }
        let secret_name = secret.metadata.name.clone().unwrap_or_default();
        let Some(id) = device_id(secret) else {
            findings.push(format!("{component} Secret {secret_name} names no device"));
            orphaned += 1;
            continue;
        };
        let belongs = spec_ids.contains(id.as_str());
        if !belongs {
            findings.push(format!(
                "orphaned {component} Secret {secret_name} of device {id}"
            ));
            orphaned += 1;
        }
        if component == "bundle"
            && let Some(cs) = connection_string(secret)
        {
            current_bundles.insert(id.clone(), cs);
        }
        per_device
            .entry((component, id))
            .or_default()
            .push(secret_name);
    }
    for ((component, id), names) in &per_device {
        if names.len() > 1 {
            findings.push(format!(
                "{} {component} Secrets for {id}: {names:?}",
                names.len()
            ));
            duplicated += names.len() - 1;
        }
    }

    // Configurations: one per deployment and layer variant, none of a deployment not in the spec.
    let deployments: BTreeSet<&str> = h.spec.deployments.iter().map(|d| d.name.as_str()).collect();
    let mut per_deployment: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (id, config) in configurations(env, &uid).await? {
        let label = |key: &str| {
            config
                .pointer(&format!("/labels/{key}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let deployment = label("edgeHierarchyDeployment");
        if !deployments.contains(deployment.as_str()) {
            findings.push(format!(
                "orphaned configuration {id} (deployment {deployment:?})"
            ));
            orphaned += 1;
        }
        per_deployment
            .entry((deployment, label("edgeHierarchyVariant")))
            .or_default()
            .push(id);
    }
    for ((deployment, variant), ids) in &per_deployment {
        if ids.len() > 1 {
            findings.push(format!(
                "{} configurations for deployment {deployment} ({variant}): {ids:?}",
                ids.len()
            ));
            duplicated += ids.len() - 1;
        }
    }

    // Bundles that authenticate: the first one handed out and the current one, with the hub's
    // own device authentication; then edge-sim from the current ones.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(
            env.hub.emulator.ca_pem.as_bytes(),
        )?)
        .build()?;
    let mut direct_ok: BTreeSet<&str> = BTreeSet::new();
    for id in &edge_ids {
        let Some(current) = current_bundles.get(*id) else {
            findings.push(format!("{id}: no bundle Secret"));
            continue;
        };
        if !authenticates(&http, current).await? {
            findings.push(format!("{id}: the current bundle does not authenticate"));
            continue;
        }
        let first = seen
            .devices
            .get(*id)
            .and_then(|d| d.connection_string.as_deref())
            .filter(|first| first != current);
        if let Some(first) = first
            && !authenticates(&http, first).await?
        {
            findings.push(format!(
                "{id}: the first bundle handed out no longer authenticates (keys changed)"
            ));
            continue;
        }
        direct_ok.insert(id);
    }
    let reported = edge_sim_reports(env, namespace, name, &edge_ids).await?;
    for id in &edge_ids {
        if !reported.contains(*id) {
            findings.push(format!(
                "{id}: edge-sim did not report $edgeAgent with its bundle"
            ));
        }
    }
    let authenticated = edge_ids
        .iter()
        .filter(|id| direct_ok.contains(**id) && reported.contains(**id))
        .count();

    let tally = Tally {
        lost: lost.len(),
        duplicated,
        orphaned,
        authenticated,
        bundles: edge_ids.len(),
        findings,
    };
    // The rest of what the spec says (parents, capability, tags) must hold too.
    if tally.lost == 0 {
        assert_hub_matches(env, namespace, name)
            .await
            .with_context(|| format!("{tally}"))?;
    }
    eprintln!(
        "chaos: {namespace}/{name}: the witness saw {} first bundles and took {} hub samples",
        seen.devices
            .values()
            .filter(|d| d.connection_string.is_some())
            .count(),
        seen.samples
    );
    Ok(tally)
}

/// Runs edge-sim for the hierarchy (fresh state, from the bundle Secrets as they are now) until
/// every device in `edge_ids` has `$edgeAgent` reported properties (only its bundle's
/// credentials can write them), or 3 minutes have passed; answers the devices that reported.
async fn edge_sim_reports(
    env: &Env,
    namespace: &str,
    name: &str,
    edge_ids: &BTreeSet<&str>,
) -> anyhow::Result<BTreeSet<String>> {
    let sim = start_sim(env, namespace, name)?;
    let admin = &env.hub.admin;
    let reported = Mutex::new(BTreeSet::new());
    let _ = wait_until(
        Duration::from_secs(180),
        Duration::from_secs(2),
        "edge-sim to report $edgeAgent for every Edge device",
        || async {
            for id in edge_ids {
                if reported.lock().unwrap().contains(*id) {
                    continue;
                }
                let twin = admin
                    .get_json(&format!("twins/{id}/modules/$edgeAgent"))
                    .await
                    .ok()?;
                if twin.pointer("/properties/reported/systemModules").is_some() {
                    reported.lock().unwrap().insert(id.to_string());
                }
            }
            (reported.lock().unwrap().len() == edge_ids.len()).then_some(())
        },
    )
    .await;
    drop(sim);
    Ok(reported.into_inner().unwrap())
}
