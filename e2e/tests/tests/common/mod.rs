//! Shared fixtures of the operator e2e tests: a real control plane, the IoT Hub emulator and the
//! operator as its own process (both started by `e2e_harness::operator_env`), plus a raw hub
//! client for out-of-band edits.
#![allow(dead_code)]

pub mod chaos;
pub mod hub;
pub mod leaks;
pub mod leases;
pub mod sim;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use e2e_harness::{
    ControlPlane, ControlPlaneOptions, Emulator, Operator, OperatorFlags, install_crd, wait_until,
    workspace_bin, workspace_root,
};
use edge_hierarchy_operator::api::{EdgeHierarchy, EdgeHierarchyStatus};
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use kube::Api;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

pub use hub::HubAdmin;

/// How long a hierarchy may take to converge on this shared 2-core machine.
pub const CONVERGE: Duration = Duration::from_secs(180);
pub const POLL: Duration = Duration::from_millis(500);

/// The emulator (see [`e2e_harness::operator_env::Emulator`]) and a raw client of its hub.
pub struct Hub {
    pub emulator: Emulator,
    pub admin: HubAdmin,
}

/// The timing every operator e2e test runs under unless it sets its own: twin queries see a
/// write 5 s after it, and automatic configurations are evaluated at creation and then every
/// 15 s. Azure documents both (query results lag writes by seconds; configurations are
/// evaluated about every five minutes), so a test that passes here does not lean on the
/// emulator seeing writes at once.
pub const HARSH_TIMING: [(&str, &str); 2] = [
    ("--query-lag-ms", "5000"),
    ("--config-eval-interval-secs", "15"),
];

/// `extra_args` with [`HARSH_TIMING`] added for each flag it does not give itself.
pub fn with_harsh_timing(extra_args: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
    for (flag, value) in HARSH_TIMING {
        if !extra_args.iter().any(|a| a.split('=').next() == Some(flag)) {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    args
}

impl Hub {
    /// Starts the workspace's `iothub-emulator` with `--port 0 --dir DIR extra_args...` and
    /// [`HARSH_TIMING`] where `extra_args` leaves it out.
    pub async fn start(dir: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        let args = with_harsh_timing(extra_args);
        let emulator = Emulator::start(&workspace_bin("iothub-emulator")?, dir, &args).await?;
        let admin = HubAdmin::new(&emulator.connection_string, &emulator.ca_pem)?;
        Ok(Self { emulator, admin })
    }
}

/// How the tests run the operator: an ephemeral metrics port (the tests read it from the log) and
/// its own debug logs.
pub const OPERATOR_FLAGS: OperatorFlags<'static> = OperatorFlags {
    args: &["--metrics-addr", "127.0.0.1:0"],
    rust_log: "info,edge_hierarchy_operator=debug,kube=warn",
};

/// Starts the workspace's operator binary against the cluster of `kubeconfig`, logging to `log`.
pub fn start_operator(kubeconfig: &Path, log: &Path) -> anyhow::Result<Operator> {
    start_operator_with(kubeconfig, log, &[])
}

/// [`start_operator`] with `extra_args` after [`OPERATOR_FLAGS`]' own.
pub fn start_operator_with(
    kubeconfig: &Path,
    log: &Path,
    extra_args: &[String],
) -> anyhow::Result<Operator> {
    let args: Vec<&str> = OPERATOR_FLAGS
        .args
        .iter()
        .copied()
        .chain(extra_args.iter().map(String::as_str))
        .collect();
    Operator::start(
        &workspace_bin("edge-hierarchy-operator")?,
        kubeconfig,
        log,
        OperatorFlags {
            args: &args,
            rust_log: OPERATOR_FLAGS.rust_log,
        },
    )
}

/// Control plane + emulator + a client: what every operator e2e test stands on, whether the
/// operator runs as a process of the test ([`Env`]) or in Pods on the test node.
pub struct World {
    pub cluster: ControlPlane,
    pub hub: Hub,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    /// Reads the operator's log, wherever it runs (shown when a wait fails).
    operator_log: Box<dyn Fn() -> String + Send + Sync>,
}

/// A [`World`] with the CRD installed and the operator running as a process of the test.
pub struct Env {
    pub world: World,
    pub operator: Operator,
    /// Arguments of `run` beyond [`OPERATOR_FLAGS`], kept for [`Env::restart_operator`].
    operator_args: Vec<String>,
}

impl std::ops::Deref for Env {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

impl std::ops::DerefMut for Env {
    fn deref_mut(&mut self) -> &mut World {
        &mut self.world
    }
}

impl Env {
    pub async fn start(emulator_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(emulator_args, &[]).await
    }

    /// [`Env::start`] with `operator_args` given to the operator's `run` as well.
    pub async fn start_with(
        emulator_args: &[&str],
        operator_args: &[&str],
    ) -> anyhow::Result<Self> {
        let cluster = ControlPlane::start(ControlPlaneOptions::default()).await?;
        install_crd(&cluster)?;
        let mut world = World::start(cluster, emulator_args).await?;
        let log = world.dir.path().join("operator.log");
        let operator_args: Vec<String> = operator_args.iter().map(|a| a.to_string()).collect();
        let operator = start_operator_with(world.cluster.kubeconfig_path(), &log, &operator_args)?;
        world.read_operator_log_with(move || std::fs::read_to_string(&log).unwrap_or_default());
        Ok(Self {
            world,
            operator,
            operator_args,
        })
    }

    pub fn restart_operator(&mut self) -> anyhow::Result<()> {
        let log = self.dir.path().join("operator.log");
        self.operator =
            start_operator_with(self.cluster.kubeconfig_path(), &log, &self.operator_args)?;
        Ok(())
    }
}

impl World {
    /// The emulator beside `cluster` (with `emulator_args`, see [`Hub::start`]).
    pub async fn start(cluster: ControlPlane, emulator_args: &[&str]) -> anyhow::Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir()?;
        let client = cluster.client();
        let hub = Hub::start(&dir.path().join("hub"), emulator_args).await?;
        Ok(Self {
            cluster,
            hub,
            client,
            dir,
            operator_log: Box::new(String::new),
        })
    }

    /// Where failure messages read the operator's log from.
    pub fn read_operator_log_with(&mut self, read: impl Fn() -> String + Send + Sync + 'static) {
        self.operator_log = Box::new(read);
    }

    pub fn operator_output(&self) -> String {
        (self.operator_log)()
    }

    /// A namespace with the hub Secrets `iothub-service` and `iothub-ca`.
    pub async fn namespace(&self, name: &str) -> anyhow::Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces.create(&PostParams::default(), &ns).await?;
        self.put_secret(
            name,
            "iothub-service",
            "connectionString",
            &self.hub.emulator.connection_string,
        )
        .await?;
        self.put_secret(name, "iothub-ca", "ca.crt", &self.hub.emulator.ca_pem)
            .await?;
        Ok(())
    }

    /// Creates or replaces an Opaque Secret with one key.
    pub async fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        value: &str,
    ) -> anyhow::Result<()> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {key: value},
        });
        let mut secret: Secret = serde_json::from_value(secret)?;
        // Replaced in place, as `kubectl apply` would: deleting first would let the operator
        // see a moment with no Secret at all and report that instead of the new content.
        match secrets.get_opt(name).await? {
            Some(existing) => {
                secret.metadata.resource_version = existing.metadata.resource_version;
                secrets
                    .replace(name, &PostParams::default(), &secret)
                    .await?;
            }
            None => {
                secrets.create(&PostParams::default(), &secret).await?;
            }
        }
        Ok(())
    }

    /// The hierarchy's Secrets of one component (`bundle`, `certs`), by device id.
    pub async fn device_secrets(
        &self,
        namespace: &str,
        hierarchy: &str,
        component: &str,
    ) -> anyhow::Result<BTreeMap<String, Secret>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!(
            "edgehierarchy.dev/hierarchy={hierarchy},edgehierarchy.dev/component={component}"
        );
        let list = api.list(&ListParams::default().labels(&selector)).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|s| {
                let id = s
                    .metadata
                    .annotations
                    .as_ref()?
                    .get("edgehierarchy.dev/device-id")?
                    .clone();
                Some((id, s))
            })
            .collect())
    }

    pub fn hierarchies(&self, namespace: &str) -> Api<EdgeHierarchy> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Applies a hierarchy given as YAML (server-side apply, like `kubectl apply --server-side`).
    pub async fn apply(&self, namespace: &str, yaml: &str) -> anyhow::Result<EdgeHierarchy> {
        let object: serde_json::Value = serde_yaml::from_str(yaml)?;
        let name = object["metadata"]["name"]
            .as_str()
            .context("metadata.name")?
            .to_string();
        let api = self.hierarchies(namespace);
        Ok(api
            .patch(
                &name,
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(&object),
            )
            .await?)
    }

    pub async fn status(&self, namespace: &str, name: &str) -> anyhow::Result<EdgeHierarchyStatus> {
        Ok(self
            .hierarchies(namespace)
            .get(name)
            .await?
            .status
            .unwrap_or_default())
    }

    /// Waits for a condition of the hierarchy to have `status` for the current generation.
    pub async fn wait_condition(
        &self,
        namespace: &str,
        name: &str,
        type_: &str,
        status: &str,
    ) -> anyhow::Result<EdgeHierarchy> {
        let api = self.hierarchies(namespace);
        let what = format!("{namespace}/{name} to have {type_}={status}");
        wait_until(CONVERGE, POLL, &what, || async {
            let h = api.get(name).await.ok()?;
            let s = h.status.as_ref()?;
            let c = s.conditions.iter().find(|c| c.type_ == type_)?;
            (c.status == status && s.observed_generation == h.metadata.generation)
                .then_some(h.clone())
        })
        .await
        .with_context(|| self.describe(namespace, name))
    }

    /// Waits until `check` holds on the hierarchy's status.
    pub async fn wait_status<F>(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        check: F,
    ) -> anyhow::Result<EdgeHierarchyStatus>
    where
        F: Fn(&EdgeHierarchyStatus) -> bool,
    {
        let api = self.hierarchies(namespace);
        wait_until(CONVERGE, POLL, what, || async {
            let s = api.get(name).await.ok()?.status?;
            check(&s).then_some(s)
        })
        .await
        .with_context(|| self.describe(namespace, name))
    }

    /// Makes the operator reconcile now (an annotation change reaches it through its watch).
    pub async fn poke(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let stamp = format!("{:?}", std::time::SystemTime::now());
        let patch =
            serde_json::json!({"metadata": {"annotations": {"e2e.edgehierarchy.dev/poke": stamp}}});
        self.hierarchies(namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Waits for the next full sync after now (lastSyncTime moves on).
    pub async fn resync(&self, namespace: &str, name: &str) -> anyhow::Result<EdgeHierarchyStatus> {
        let before = self.status(namespace, name).await?.last_sync_time;
        // lastSyncTime has one-second precision: let a second pass so the next sync shows.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        self.poke(namespace, name).await?;
        self.wait_status(namespace, name, "the next sync", |s| {
            s.last_sync_time.is_some() && s.last_sync_time != before
        })
        .await
    }

    /// Events about a hierarchy, as `reason: note` lines.
    pub async fn events(&self, namespace: &str, name: &str) -> anyhow::Result<Vec<String>> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                )
            })
            .collect())
    }

    pub async fn wait_event(
        &self,
        namespace: &str,
        name: &str,
        reason: &str,
        needle: &str,
    ) -> anyhow::Result<String> {
        let what = format!("an Event {reason} containing {needle:?} on {namespace}/{name}");
        wait_until(Duration::from_secs(60), POLL, &what, || async {
            self.events(namespace, name)
                .await
                .ok()?
                .into_iter()
                .find(|e| e.starts_with(&format!("{reason}:")) && e.contains(needle))
        })
        .await
    }

    /// A readable dump for failure messages: the status and the operator's last log lines.
    pub fn describe(&self, namespace: &str, name: &str) -> String {
        let out = self
            .cluster
            .kubectl(&["-n", namespace, "get", "eh", name, "-o", "yaml"]);
        let yaml = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let log = self.operator_output();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        format!(
            "hierarchy:\n{yaml}\noperator log (last lines, newest first):\n{}",
            tail.join("\n")
        )
    }
}

/// Reads an example hierarchy and points it at the emulator's CA.
pub fn example(name: &str) -> String {
    let text = std::fs::read_to_string(workspace_root().join("examples").join(name))
        .expect("example exists");
    with_emulator_ca(&text)
}

/// Adds `caSecretRef: {name: iothub-ca}` below the connection string reference, and budgets the
/// operator's calls as for an S3 hub: these tests run many hierarchies against one emulator at
/// once, and an S1 hub's 20 queries a minute would make them wait on the quota, not on the
/// operator. The throttling test runs an S1 emulator of its own.
pub fn with_emulator_ca(yaml: &str) -> String {
    yaml.replace(
        "    connectionStringSecretRef: {name: iothub-service, key: connectionString}\n",
        "    connectionStringSecretRef: {name: iothub-service, key: connectionString}\n    caSecretRef: {name: iothub-ca}\n    rateLimits: {sku: S3}\n",
    )
}

/// A hierarchy YAML with the given policy lines and devices (`- id: ...` items, indented by 4).
pub fn hierarchy_yaml(name: &str, policy: &str, devices: &str) -> String {
    format!(
        "apiVersion: edgehierarchy.dev/v1alpha1\nkind: EdgeHierarchy\nmetadata:\n  name: {name}\nspec:\n  iotHub:\n    connectionStringSecretRef: {{name: iothub-service, key: connectionString}}\n    caSecretRef: {{name: iothub-ca}}\n    rateLimits: {{sku: S3}}\n  policy: {{resyncInterval: 10s{policy}}}\n  devices:\n{devices}"
    )
}

/// Counts of the emulator's stats that tests compare.
pub fn stat(stats: &serde_json::Value, key: &str) -> u64 {
    stats
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// Waits until the hub's twin queries, which lag writes, return a row of `sql` for which `check`
/// holds. An edit made out of band reaches the operator's queries only then, so a test pokes
/// the operator after this, not right after the edit.
pub async fn wait_query_shows<F>(env: &Env, sql: &str, check: F) -> anyhow::Result<()>
where
    F: Fn(&Value) -> bool,
{
    let what = format!("the hub's query {sql:?} to show the edit");
    wait_for(env, &what, || async {
        let rows = env.hub.admin.query(sql).await.ok()?;
        rows.iter().any(&check).then_some(())
    })
    .await
}

/// Waits (up to [`CONVERGE`]) until `check` returns a value; failures show the operator's log.
pub async fn wait_for<T, F, Fut>(env: &World, what: &str, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_until(CONVERGE, POLL, what, check)
        .await
        .with_context(|| {
            let log = env.operator_output();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            format!("operator log (newest first):\n{}", tail.join("\n"))
        })
}

/// The operator's metrics address (from its log line) and one scrape of `/metrics`.
pub async fn scrape_metrics(env: &Env) -> anyhow::Result<(String, String)> {
    let log = env.operator.output();
    let line = log
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .context("the operator did not log its metrics address")?;
    let address = line
        .split("address=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .context("no address in the log line")?
        .to_string();
    let metrics = reqwest::Client::new()
        .get(format!("http://{address}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok((address, metrics))
}

/// Waits until none of `ids` exists in the hub.
pub async fn wait_until_absent(admin: &HubAdmin, ids: &[&str]) -> anyhow::Result<()> {
    let what = format!("devices {ids:?} to be deleted from the hub");
    wait_until(CONVERGE, POLL, &what, || async {
        for id in ids {
            if admin.device(id).await.ok()?.is_some() {
                return None;
            }
        }
        Some(())
    })
    .await
}

/// Waits until the hierarchy object is gone (its finalizer has run).
pub async fn wait_until_gone(env: &World, namespace: &str, name: &str) -> anyhow::Result<()> {
    let api = env.hierarchies(namespace);
    let what = format!("{namespace}/{name} to be deleted");
    wait_until(CONVERGE, POLL, &what, || async {
        matches!(api.get_opt(name).await, Ok(None)).then_some(())
    })
    .await
    .with_context(|| env.describe(namespace, name))
}

fn scope_of(twin: &Value) -> Option<&str> {
    twin.get("deviceScope").and_then(Value::as_str)
}

/// Checks the hub holds `ids` as the spec says: edge capability, parent links, ownership tags.
pub async fn assert_hub_matches(
    env: &Env,
    namespace: &str,
    name: &str,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let h = env.hierarchies(namespace).get(name).await?;
    let uid = h.metadata.uid.clone().unwrap_or_default();
    let ids: Vec<&str> = h.spec.devices.iter().map(|d| d.id.as_str()).collect();
    let twins = env.hub.admin.twins(&ids).await?;
    for d in &h.spec.devices {
        let twin = twins
            .get(&d.id)
            .with_context(|| format!("device {} is not in the hub", d.id))?;
        let edge = d.device_type == edge_hierarchy_operator::api::DeviceType::Edge;
        anyhow::ensure!(
            twin.pointer("/capabilities/iotEdge") == Some(&json!(edge)),
            "{}: iotEdge {:?}",
            d.id,
            twin.get("capabilities")
        );
        anyhow::ensure!(
            twin.pointer("/status") == Some(&json!("enabled")),
            "{}: status {:?}",
            d.id,
            twin.get("status")
        );
        let tags = twin
            .pointer("/tags/edgeHierarchy")
            .with_context(|| format!("{}: no ownership tags", d.id))?;
        anyhow::ensure!(
            tags["uid"] == json!(uid)
                && tags["name"] == json!(name)
                && tags["namespace"] == json!(namespace),
            "{}: tags {tags}",
            d.id
        );
        // The operator's ownership proof: 32 hex digits (an HMAC only the operator can make).
        anyhow::ensure!(
            tags["proof"]
                .as_str()
                .is_some_and(|p| p.len() == 32 && p.bytes().all(|b| b.is_ascii_hexdigit())),
            "{}: no ownership proof in tags {tags}",
            d.id
        );
        if let Some(deployment) = &d.deployment {
            anyhow::ensure!(
                tags["deployment"] == json!(deployment),
                "{}: deployment tag {tags}",
                d.id
            );
        }
        if edge {
            let scope = scope_of(twin).unwrap_or_default();
            anyhow::ensure!(
                scope.starts_with(&format!("ms-azure-iot-edge://{}-", d.id)),
                "{}: deviceScope {scope:?}",
                d.id
            );
        }
        match &d.parent {
            None => anyhow::ensure!(
                twin.get("parentScopes")
                    .and_then(Value::as_array)
                    .is_none_or(|a| a.is_empty()),
                "{}: top device has parents",
                d.id
            ),
            Some(parent) => {
                let parent_scope = twins
                    .get(parent)
                    .and_then(scope_of)
                    .with_context(|| format!("parent {parent} has no scope"))?;
                let scopes = twin.get("parentScopes").cloned().unwrap_or_default();
                anyhow::ensure!(
                    scopes == json!([parent_scope]),
                    "{}: parentScopes {scopes} but parent scope {parent_scope}",
                    d.id
                );
                if !edge {
                    anyhow::ensure!(
                        scope_of(twin) == Some(parent_scope),
                        "{}: leaf deviceScope {:?}",
                        d.id,
                        scope_of(twin)
                    );
                }
            }
        }
    }
    Ok(twins)
}

/// The condition `type_` of a hierarchy's status (fails when it is missing).
pub fn condition(
    h: &EdgeHierarchy,
    type_: &str,
) -> anyhow::Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    h.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .cloned()
        .with_context(|| format!("no {type_} condition"))
}

/// The tutorial's YAML without the top layer's API proxy module (its children then cannot pull).
pub fn without_api_proxy(yaml: &str) -> anyhow::Result<String> {
    let start = yaml
        .find("                IoTEdgeAPIProxy:")
        .context("no API proxy in the YAML")?;
    let end = yaml[start..]
        .find("          $edgeHub:")
        .context("no end of the API proxy")?
        + start;
    Ok(format!("{}{}", &yaml[..start], &yaml[end..]))
}

/// The configurations in the hub that the hierarchy with `uid` owns, by id.
pub async fn configurations(env: &Env, uid: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let all = env.hub.admin.get_json("configurations").await?;
    Ok(all
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            c.pointer("/labels/edgeHierarchyUid")
                .and_then(Value::as_str)
                == Some(uid)
        })
        .filter_map(|c| Some((c.get("id")?.as_str()?.to_string(), c)))
        .collect())
}
