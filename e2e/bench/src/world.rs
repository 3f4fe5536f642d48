//! One scenario's world: a real control plane with the CRD, the IoT Hub emulator at a tier and
//! unit count, the hub Secrets, and the operator as its own process; and the reads every
//! scenario makes of it (Ready, status size, the operator's Secrets).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use e2e_harness::{
    ControlPlane, ControlPlaneOptions, Emulator, Operator, OperatorFlags, install_crd, wait_until,
};
use edge_hierarchy_operator::iothub::{HubTier, RateLimits};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, PartialObjectMeta, Patch,
    PatchParams, PostParams,
};
use serde_json::{Value, json};

use crate::stats::StatsClient;

pub const NAMESPACE: &str = "bench";
/// The label the operator puts on its Secrets to say what they hold (root CA, edge CA, bundle).
pub const COMPONENT_LABEL: &str = "edgehierarchy.dev/component";
const HIERARCHY_LABEL: &str = "edgehierarchy.dev/hierarchy";
/// `run` at info level with its metrics on a free loopback port (the profile reads them): the
/// benchmark reads times and memory, not logs.
const OPERATOR_FLAGS: OperatorFlags<'static> = OperatorFlags {
    args: &["--metrics-addr", "127.0.0.1:0"],
    rust_log: "info,kube=warn",
};

/// The hub a scenario runs against.
#[derive(Debug, Clone, Copy)]
pub struct HubShape {
    pub sku: HubTier,
    pub units: u32,
    pub latency_ms: u64,
}

/// `S3 x10 (20 ms latency)`, as the bench's headings print it.
impl std::fmt::Display for HubShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} x{} ({} ms latency)",
            self.sku_name(),
            self.units,
            self.latency_ms
        )
    }
}

impl HubShape {
    /// The spelling of `spec.iotHub.rateLimits.sku` and the emulator's `--sku`.
    pub fn sku_name(&self) -> &'static str {
        match self.sku {
            HubTier::S1 => "S1",
            HubTier::S2 => "S2",
            HubTier::S3 => "S3",
        }
    }

    pub fn limits(&self) -> RateLimits {
        RateLimits::for_sku(self.sku, self.units)
    }
}

/// Everything a scenario's runs share; dropping it stops every process.
pub struct World {
    pub cluster: ControlPlane,
    pub emulator: Emulator,
    pub stats: StatsClient,
    pub hub: HubShape,
}

impl World {
    pub async fn start(hub: HubShape, emulator_bin: &Path, dir: &Path) -> anyhow::Result<World> {
        let started = Instant::now();
        let cluster = ControlPlane::start(ControlPlaneOptions::default()).await?;
        install_crd(&cluster)?;
        let emulator_args = vec![
            "--sku".to_string(),
            hub.sku_name().into(),
            "--units".into(),
            hub.units.to_string(),
            "--latency-ms".into(),
            hub.latency_ms.to_string(),
            // Azure's query lag (the default, 3 s) stays; configurations are evaluated every 15 s
            // rather than every five minutes, so the run measures the operator, not the schedule.
            "--config-eval-interval-secs".into(),
            "15".into(),
        ];
        let emulator = Emulator::start(emulator_bin, &dir.join("hub"), &emulator_args).await?;
        let stats = StatsClient::new(emulator.port, &emulator.ca_pem)?;
        let client = cluster.client();
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
            )
            .await?;
        let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
        for (name, key, value) in [
            (
                "iothub-service",
                "connectionString",
                &emulator.connection_string,
            ),
            ("iothub-ca", "ca.crt", &emulator.ca_pem),
        ] {
            let secret = json!({"metadata": {"name": name}, "stringData": {key: value}});
            secrets
                .create(&PostParams::default(), &serde_json::from_value(secret)?)
                .await?;
        }
        println!(
            "setup: control plane (etcd, kube-apiserver, kube-controller-manager), CRD, emulator at {hub} and hub Secrets ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(World {
            cluster,
            emulator,
            stats,
            hub,
        })
    }

    pub fn hierarchies(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("edgehierarchy.dev", "v1alpha1", "EdgeHierarchy");
        Api::namespaced_with(
            self.cluster.client(),
            NAMESPACE,
            &ApiResource::from_gvk_with_plural(&gvk, "edgehierarchies"),
        )
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.cluster.client(), NAMESPACE)
    }

    /// Starts the operator and lets it open its watches, so the clock measures reconciling, not
    /// process start-up.
    pub async fn start_operator(&self, binary: &Path, log: &Path) -> anyhow::Result<Operator> {
        let mut operator =
            Operator::start(binary, self.cluster.kubeconfig_path(), log, OPERATOR_FLAGS)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(status) = operator.process.exit_status() {
            bail!(
                "the operator exited at start ({status}); its log ends:\n{}",
                operator.process.log_tail(20)
            );
        }
        Ok(operator)
    }

    /// Server-side applies a hierarchy object as the benchmark.
    pub async fn apply(&self, object: &Value) -> anyhow::Result<()> {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .context("the hierarchy object has no name")?;
        self.hierarchies()
            .patch(
                name,
                &PatchParams::apply("operator-bench").force(),
                &Patch::Apply(object),
            )
            .await
            .with_context(|| format!("applying hierarchy {name}"))?;
        Ok(())
    }

    /// Waits until every named hierarchy is Ready=True for its current generation; returns,
    /// per hierarchy, when it was first seen Ready (from `since`) and the object then.
    pub async fn wait_ready(
        &self,
        names: &[String],
        since: Instant,
        timeout: Duration,
        operator: &Operator,
    ) -> anyhow::Result<BTreeMap<String, (Duration, DynamicObject)>> {
        let api = self.hierarchies();
        let ready = std::sync::Mutex::new(BTreeMap::new());
        let outcome = wait_until(
            timeout,
            Duration::from_millis(250),
            "the hierarchies to be Ready=True",
            || async {
                let list = api.list(&ListParams::default()).await.ok()?;
                let mut ready = ready.lock().expect("ready map");
                for object in list.items {
                    let name = object.metadata.name.clone().unwrap_or_default();
                    if names.contains(&name)
                        && !ready.contains_key(&name)
                        && ready_status(&object) == Some("True")
                    {
                        ready.insert(name, (since.elapsed(), object));
                    }
                }
                (ready.len() == names.len()).then_some(())
            },
        )
        .await;
        if let Err(error) = outcome {
            let waiting: Vec<&String> = {
                let ready = ready.lock().expect("ready map");
                names.iter().filter(|n| !ready.contains_key(*n)).collect()
            };
            let first = waiting.first().map(|n| n.to_string()).unwrap_or_default();
            let last = api.get(&first).await.ok();
            bail!(
                "{error:#}\nnot Ready: {waiting:?}\nlast status of {first}: {}\noperator log ends:\n{}",
                describe_status(last.as_ref()),
                operator.process.log_tail(20)
            );
        }
        Ok(ready.into_inner().expect("ready map"))
    }

    /// Sets `spec.policy.resyncInterval` of each named hierarchy and waits until each is Ready
    /// for the new generation.
    pub async fn set_resync_interval(
        &self,
        names: &[String],
        interval: &str,
        operator: &Operator,
    ) -> anyhow::Result<()> {
        let api = self.hierarchies();
        let started = Instant::now();
        for name in names {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"policy": {"resyncInterval": interval}}})),
            )
            .await
            .with_context(|| format!("setting the resyncInterval of hierarchy {name}"))?;
        }
        self.wait_ready(names, started, Duration::from_secs(300), operator)
            .await?;
        Ok(())
    }

    /// Waits for one timed resync of each named hierarchy (its `resyncInterval` passing, not a
    /// change or an annotation, which make a sync read the hub afresh): until each has written
    /// a `lastSyncTime` newer than now.
    pub async fn next_timed_resync(&self, names: &[String]) -> anyhow::Result<()> {
        let before = self.last_sync_times(names).await?;
        self.wait_synced_after(names, &before, Duration::from_secs(300))
            .await
    }

    /// `status.lastSyncTime` of each named hierarchy.
    pub async fn last_sync_times(
        &self,
        names: &[String],
    ) -> anyhow::Result<BTreeMap<String, Option<String>>> {
        let api = self.hierarchies();
        let mut times = BTreeMap::new();
        for name in names {
            times.insert(name.clone(), last_sync(&api.get(name).await?));
        }
        Ok(times)
    }

    /// Waits until every hierarchy in `before` has a `lastSyncTime` other than the one there.
    pub async fn wait_synced_after(
        &self,
        names: &[String],
        before: &BTreeMap<String, Option<String>>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let api = self.hierarchies();
        wait_until(
            timeout,
            Duration::from_millis(100),
            "the hierarchies to write a new lastSyncTime",
            || async {
                for name in names {
                    let object = api.get(name).await.ok()?;
                    if last_sync(&object) == before.get(name).cloned().flatten() {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }

    /// The operator's Secrets of one hierarchy, metadata only.
    async fn hierarchy_secrets(
        &self,
        hierarchy: &str,
    ) -> anyhow::Result<Vec<PartialObjectMeta<Secret>>> {
        let selector = format!("{HIERARCHY_LABEL}={hierarchy}");
        let list = self
            .secrets()
            .list_metadata(&ListParams::default().labels(&selector))
            .await?;
        Ok(list.items)
    }

    /// Name -> resourceVersion of the operator's Secrets of one hierarchy.
    pub async fn secret_versions(&self, hierarchy: &str) -> anyhow::Result<SecretVersions> {
        Ok(SecretVersions(
            self.hierarchy_secrets(hierarchy)
                .await?
                .into_iter()
                .filter_map(|s| Some((s.metadata.name?, s.metadata.resource_version?)))
                .collect(),
        ))
    }

    /// `N (component a, component b, ...)` of the operator's Secrets of one hierarchy.
    pub async fn secrets_by_component(&self, hierarchy: &str) -> anyhow::Result<String> {
        let secrets = self.hierarchy_secrets(hierarchy).await?;
        let mut by_component: BTreeMap<String, usize> = BTreeMap::new();
        for secret in &secrets {
            let component = secret
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(COMPONENT_LABEL))
                .map_or("no component label", String::as_str);
            *by_component.entry(component.to_string()).or_default() += 1;
        }
        let parts: Vec<String> = by_component
            .iter()
            .map(|(component, n)| format!("{component} {n}"))
            .collect();
        Ok(format!("{} ({})", secrets.len(), parts.join(", ")))
    }

    pub async fn stop(self) {
        let World {
            cluster,
            mut emulator,
            ..
        } = self;
        emulator.process.stop(Duration::from_secs(10));
        cluster.stop().await;
    }
}

/// The resourceVersions of a set of Secrets at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretVersions(pub BTreeMap<String, String>);

impl SecretVersions {
    /// Secrets written, created or deleted between `self` and `later`.
    pub fn changed_in(&self, later: &SecretVersions) -> usize {
        let changed = later
            .0
            .iter()
            .filter(|(name, version)| self.0.get(*name) != Some(version))
            .count();
        let deleted = self.0.keys().filter(|n| !later.0.contains_key(*n)).count();
        changed + deleted
    }
}

fn last_sync(object: &DynamicObject) -> Option<String> {
    object
        .data
        .pointer("/status/lastSyncTime")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The Ready condition's status, if the status is about the object's current generation.
pub fn ready_status(object: &DynamicObject) -> Option<&str> {
    let status = object.data.get("status")?;
    if status.get("observedGeneration").and_then(Value::as_i64) != object.metadata.generation {
        return None;
    }
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .get("status")?
        .as_str()
}

/// Bytes of the whole object as the API server stores it (metadata with managedFields, spec and
/// status), in JSON: what counts against etcd's request limit.
pub fn object_bytes(object: &DynamicObject) -> usize {
    serde_json::to_vec(object).map_or(0, |bytes| bytes.len())
}

/// An object's size in bytes of JSON, whole and two of its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectSize {
    pub total: usize,
    pub status: usize,
    pub managed_fields: usize,
}

impl ObjectSize {
    pub fn of(object: &DynamicObject) -> Self {
        let part = |value: Option<&Value>| {
            value.map_or(0, |v| serde_json::to_vec(v).map_or(0, |bytes| bytes.len()))
        };
        let managed = object
            .metadata
            .managed_fields
            .as_ref()
            .map_or(0, |m| serde_json::to_vec(m).map_or(0, |bytes| bytes.len()));
        Self {
            total: object_bytes(object),
            status: part(object.data.get("status")),
            managed_fields: managed,
        }
    }
}

pub fn describe_status(object: Option<&DynamicObject>) -> String {
    let Some(status) = object.and_then(|o| o.data.get("status")) else {
        return "no status".into();
    };
    let conditions: Vec<String> = status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={} ({})",
                c["type"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?"),
                c["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    format!(
        "summary {}; conditions {}",
        status.get("summary").cloned().unwrap_or(Value::Null),
        conditions.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(pairs: &[(&str, &str)]) -> SecretVersions {
        SecretVersions(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_hub_shape_prints_tier_units_and_latency() {
        let hub = HubShape {
            sku: HubTier::S3,
            units: 10,
            latency_ms: 20,
        };
        assert_eq!(hub.to_string(), "S3 x10 (20 ms latency)");
    }

    #[test]
    fn counts_written_created_and_deleted_secrets() {
        let before = versions(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let after = versions(&[("a", "1"), ("b", "7"), ("d", "8")]);
        assert_eq!(
            before.changed_in(&after),
            3,
            "b written, d created, c deleted"
        );
        assert_eq!(before.changed_in(&before), 0);
    }

    #[test]
    fn ready_counts_only_for_the_current_generation() {
        let object = |observed: i64| -> DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "edgehierarchy.dev/v1alpha1", "kind": "EdgeHierarchy",
                "metadata": {"name": "h", "generation": 2},
                "status": {"observedGeneration": observed,
                           "conditions": [{"type": "Ready", "status": "True"}]},
            }))
            .unwrap()
        };
        assert_eq!(ready_status(&object(2)), Some("True"));
        assert_eq!(ready_status(&object(1)), None);
    }
}
