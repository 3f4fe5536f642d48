//! The simulation loop: every interval it re-reads the bundles, installs new revisions, runs the
//! checks, opens each child's TLS link to its parent, reads the desired twins, resolves images by
//! the chain rule, reports `$edgeAgent`/`$edgeHub` properties when they changed, and sends
//! SimulatedTemperatureSensor telemetry up the chain of parents.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, join_all};
use serde::Serialize;
use serde_json::{Value, json};

use crate::chain::{DeviceNode, LinkState, ModuleOutcome, ModuleSpec, resolve_modules};
use crate::checks::{Check, CheckContext, CheckStatus, DeviceMaterial, run_checks};
use crate::config::{
    EdgeConfig, HOSTNAME_PLACEHOLDER, PARENT_HOSTNAME_PLACEHOLDER, device_slug, fill_placeholders,
    parse_config,
};
use crate::hub::{HubEndpoint, HubHttp, HubTree, TOKEN_TTL_SECS, device_token, query_tree};
use crate::install::{install_files, plan_install};
use crate::link::{LinkHandler, LinkServer, Reply, Request, exchange, serve};
use crate::reported::{
    AgentDeployment, AgentReport, ClientRecord, DesiredStatus, ModuleRecord, advance,
    agent_reported, edge_hub_desired_status, edge_hub_reported, merge_patch, parse_agent_desired,
    strip_metadata, twin_time,
};
use crate::source::{Bundle, BundleSource};

/// Marker of the SimulatedTemperatureSensor image.
pub const SENSOR_IMAGE_MARKER: &str = "simulated-temperature-sensor";
/// Domain of the hostnames the simulation assigns (`<slug>.edge.sim`).
pub const DEFAULT_DOMAIN: &str = "edge.sim";
/// Least time between two reads of the hub's tree while a parent hostname is still unknown.
const TREE_RETRY: Duration = Duration::from_secs(10);
/// A child not seen for this many intervals counts as disconnected.
const CLIENT_STALE_INTERVALS: u32 = 3;

/// How to run the simulation.
#[derive(Clone)]
pub struct SimOptions {
    /// Where bundles come from.
    pub source: Arc<dyn BundleSource>,
    /// The emulator's `--dir` (`ca.crt`, `port`, `connection-string`).
    pub emulator_dir: PathBuf,
    /// Where devices are installed; a temporary folder when `None`.
    pub state_dir: Option<PathBuf>,
    /// Poll period.
    pub interval: Duration,
    /// Domain of assigned hostnames.
    pub hostname_domain: String,
}

impl SimOptions {
    /// Defaults: temporary state folder, 2 s interval, `edge.sim` hostnames.
    pub fn new(source: Arc<dyn BundleSource>, emulator_dir: impl Into<PathBuf>) -> Self {
        Self {
            source,
            emulator_dir: emulator_dir.into(),
            state_dir: None,
            interval: Duration::from_millis(2000),
            hostname_domain: DEFAULT_DOMAIN.into(),
        }
    }
}

/// The state of one module as the simulation last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleSnapshot {
    /// `running`, `backoff`, `stopped`, ...
    pub runtime_status: String,
    /// Why (the pull failure for `backoff`).
    pub status_description: String,
    /// Desired image.
    pub image: String,
}

/// The TLS link of a child to its parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkSnapshot {
    /// The parent's hostname.
    pub parent_hostname: String,
    /// Handshake and exchange worked.
    pub ok: bool,
    /// What happened.
    pub detail: String,
}

/// Telemetry counts of one device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryCounts {
    /// Own messages that reached the hub.
    pub sent: u64,
    /// Own messages that did not.
    pub send_failed: u64,
    /// Children's messages passed on successfully.
    pub forwarded: u64,
    /// Children's messages it could not pass on.
    pub forward_failed: u64,
    /// Messages this (top-layer) device posted to the hub, own and forwarded.
    pub posted_to_hub: u64,
    /// The last delivery error.
    pub last_error: Option<String>,
}

/// Everything the simulation knows about one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSnapshot {
    /// Device id.
    pub device_id: String,
    /// Where its bundle came from.
    pub origin: String,
    /// Its install folder (stands for `/`).
    pub root: PathBuf,
    /// Hostname after installation.
    pub hostname: Option<String>,
    /// Parent hostname after installation.
    pub parent_hostname: Option<String>,
    /// Parent device id (the device serving `parent_hostname`).
    pub parent_id: Option<String>,
    /// Port of its edgeHub server on 127.0.0.1.
    pub port: Option<u16>,
    /// Bundle fingerprint installed.
    pub bundle_fingerprint: String,
    /// Install or check failure that keeps the runtime down.
    pub failure: Option<String>,
    /// The checks.
    pub checks: Vec<Check>,
    /// edgeAgent running.
    pub agent_running: bool,
    /// edgeAgent's runtime status and description.
    pub agent: ModuleSnapshot,
    /// The TLS link to the parent (below the top layer).
    pub link: Option<LinkSnapshot>,
    /// `$edgeAgent` desired `$version` last acted on.
    pub desired_version: Option<i64>,
    /// `lastDesiredStatus` reported.
    pub last_desired_status: DesiredStatus,
    /// edgeHub, when created.
    pub edge_hub: Option<ModuleSnapshot>,
    /// Custom modules.
    pub modules: BTreeMap<String, ModuleSnapshot>,
    /// Children connected to its edgeHub.
    pub clients: BTreeMap<String, String>,
    /// Telemetry counts.
    pub telemetry: TelemetryCounts,
    /// Reported-property patches sent.
    pub reported_patches: u64,
    /// Last error talking to the hub.
    pub hub_error: Option<String>,
}

/// The whole simulation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Completed polls.
    pub ticks: u64,
    /// Error of the last bundle listing.
    pub source_error: Option<String>,
    /// Devices by id.
    pub devices: BTreeMap<String, DeviceSnapshot>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    send_failed: AtomicU64,
    forwarded: AtomicU64,
    forward_failed: AtomicU64,
    posted_to_hub: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn snapshot(&self) -> TelemetryCounts {
        TelemetryCounts {
            sent: self.sent.load(Ordering::Relaxed),
            send_failed: self.send_failed.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            forward_failed: self.forward_failed.load(Ordering::Relaxed),
            posted_to_hub: self.posted_to_hub.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
        }
    }
    fn fail(&self, counter: &AtomicU64, error: &str) {
        counter.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(error.to_string());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Per-device state that outlives a re-installation (records keep their timestamps).
struct DeviceState {
    link: LinkState,
    link_detail: String,
    agent_started: bool,
    agent: ModuleRecord,
    edge_hub: Option<ModuleRecord>,
    modules: BTreeMap<String, ModuleRecord>,
    deployment: Option<AgentDeployment>,
    desired_status: DesiredStatus,
    desired_version: Option<i64>,
    agent_twin_reported: Option<Value>,
    hub_twin: Option<Value>,
    clients: BTreeMap<String, ClientRecord>,
    client_seen: BTreeMap<String, Instant>,
    edge_hub_running: bool,
    reported_patches: u64,
    hub_error: Option<String>,
    device_route_noted: BTreeSet<String>,
}

impl DeviceState {
    fn new() -> Self {
        Self {
            link: LinkState::Unknown,
            link_detail: String::new(),
            agent_started: false,
            agent: ModuleRecord {
                runtime_status: "unknown".into(),
                status_description: String::new(),
                exit_code: 0,
                last_start_time_utc: None,
                last_exit_time_utc: None,
                restart_count: 0,
                last_restart_time_utc: None,
            },
            edge_hub: None,
            modules: BTreeMap::new(),
            deployment: None,
            desired_status: DesiredStatus {
                code: 406,
                description: "the agent has not read its desired properties yet".into(),
            },
            desired_version: None,
            agent_twin_reported: None,
            hub_twin: None,
            clients: BTreeMap::new(),
            client_seen: BTreeMap::new(),
            edge_hub_running: false,
            reported_patches: 0,
            hub_error: None,
            device_route_noted: BTreeSet::new(),
        }
    }
}

/// One installed bundle revision of a device.
struct Device {
    id: String,
    origin: String,
    root: PathBuf,
    fingerprint: String,
    install_key: String,
    hostname: Option<String>,
    parent_hostname: Option<String>,
    checks: Vec<Check>,
    failure: Option<String>,
    material: Option<DeviceMaterial>,
    hub: Option<HubHttp>,
    sas_key: Option<String>,
    server: Option<LinkServer>,
    state: Arc<Mutex<DeviceState>>,
    counters: Arc<Counters>,
}

impl Device {
    fn token(&self) -> Option<String> {
        let key = self.sas_key.as_deref()?;
        let hub = self.hub.as_ref()?;
        let expiry = jiff::Timestamp::now().as_second() + TOKEN_TTL_SECS;
        device_token(hub.hub_host(), &self.id, key, expiry).ok()
    }

    fn is_top(&self) -> bool {
        self.parent_hostname.is_none()
    }
}

#[derive(Default)]
struct TreeCache {
    tree: Option<HubTree>,
    key: String,
    fetched_at: Option<Instant>,
    error: Option<String>,
}

struct Inner {
    source: Arc<dyn BundleSource>,
    emulator_dir: PathBuf,
    state_dir: PathBuf,
    interval: Duration,
    domain: String,
    endpoint: HubEndpoint,
    names: RwLock<HashMap<String, std::net::SocketAddr>>,
    devices: RwLock<BTreeMap<String, Arc<Device>>>,
    tree: Mutex<TreeCache>,
    snapshot: Mutex<Snapshot>,
    ticks: AtomicU64,
}

/// A running simulation of every device of one hierarchy.
pub struct EdgeSim {
    inner: Arc<Inner>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    _temp: Option<tempfile::TempDir>,
}

impl EdgeSim {
    /// Reads the emulator's files, runs the first poll and keeps polling in the background.
    pub async fn start(options: SimOptions) -> anyhow::Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let endpoint = HubEndpoint::from_dir(&options.emulator_dir)?;
        let (state_dir, temp) = match &options.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new().prefix("edge-sim-").tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        tracing::info!(
            "edge-sim: simulating {}; state in {}; emulator {}; every {:?}",
            options.source.describe(),
            state_dir.display(),
            options.emulator_dir.display(),
            options.interval
        );
        let inner = Arc::new(Inner {
            source: options.source,
            emulator_dir: options.emulator_dir,
            state_dir,
            interval: options.interval,
            domain: options.hostname_domain,
            endpoint,
            names: RwLock::new(HashMap::new()),
            devices: RwLock::new(BTreeMap::new()),
            tree: Mutex::new(TreeCache::default()),
            snapshot: Mutex::new(Snapshot::default()),
            ticks: AtomicU64::new(0),
        });
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let looping = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                looping.tick().await;
                tokio::select! {
                    _ = tokio::time::sleep(looping.interval) => {}
                    _ = stopped.changed() => break,
                }
            }
        });
        Ok(Self {
            inner,
            stop,
            task: Some(task),
            _temp: temp,
        })
    }

    /// The state after the last completed poll.
    pub fn snapshot(&self) -> Snapshot {
        lock(&self.inner.snapshot).clone()
    }

    /// Where devices are installed.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// Stops polling and every device server.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        write(&self.inner.devices).clear();
    }
}

impl Drop for EdgeSim {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        write(&self.inner.devices).clear();
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// What one bundle says about hostnames before installation.
struct Prepared {
    bundle: Bundle,
    text: Option<String>,
    raw: Result<EdgeConfig, String>,
    hostname: Option<String>,
}

struct Handler {
    inner: Weak<Inner>,
    device_id: String,
}

impl LinkHandler for Handler {
    fn handle(&self, request: Request) -> BoxFuture<'_, Reply> {
        Box::pin(async move {
            let Some(inner) = self.inner.upgrade() else {
                return Reply::failed("the simulation is stopping");
            };
            let Some(device) = read(&inner.devices).get(&self.device_id).cloned() else {
                return Reply::failed(format!("device {} is not running", self.device_id));
            };
            let hub_running = lock(&device.state).edge_hub_running;
            match request {
                Request::Connect { device_id } => {
                    let mut state = lock(&device.state);
                    let now = Instant::now();
                    state.client_seen.insert(device_id, now);
                    if hub_running {
                        Reply::ok()
                    } else {
                        Reply::failed(format!("edgeHub is not running on {}", device.id))
                    }
                }
                Request::Telemetry {
                    device_id,
                    module_id,
                    token,
                    body,
                    mut hops,
                } => {
                    if !hub_running {
                        let why = format!("edgeHub is not running on {}", device.id);
                        device.counters.fail(&device.counters.forward_failed, &why);
                        return Reply::failed(why);
                    }
                    hops.push(device.id.clone());
                    let message = Message {
                        device_id,
                        module_id,
                        token,
                        body,
                        hops,
                    };
                    match inner.deliver(&device, &message).await {
                        Ok(()) => {
                            device.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                            Reply::ok()
                        }
                        Err(e) => {
                            device.counters.fail(&device.counters.forward_failed, &e);
                            Reply::failed(e)
                        }
                    }
                }
            }
        })
    }
}

/// A telemetry message on its way up.
struct Message {
    device_id: String,
    module_id: String,
    token: Option<String>,
    body: Value,
    hops: Vec<String>,
}

impl Inner {
    async fn tick(self: &Arc<Self>) {
        let source_error = match self.source.list().await {
            Ok(bundles) => {
                self.sync_bundles(bundles).await;
                None
            }
            Err(e) => {
                tracing::warn!("edge-sim: cannot list bundles: {e:#}");
                Some(format!("{e:#}"))
            }
        };
        let devices: Vec<Arc<Device>> = read(&self.devices).values().cloned().collect();
        join_all(devices.iter().map(|d| self.read_twins(d))).await;
        join_all(devices.iter().map(|d| self.check_link(d))).await;
        self.resolve(&devices);
        join_all(devices.iter().map(|d| self.report(d))).await;
        join_all(devices.iter().map(|d| self.send_telemetry(d))).await;
        let ticks = self.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot = self.build_snapshot(ticks, source_error, &devices);
        *lock(&self.snapshot) = snapshot;
    }

    /// Installs new bundle revisions and removes devices whose bundle is gone.
    async fn sync_bundles(self: &Arc<Self>, bundles: Vec<Bundle>) {
        let prepared: Vec<Prepared> = bundles
            .into_iter()
            .map(|bundle| {
                let text = bundle
                    .files
                    .get("config.toml")
                    .and_then(|b| String::from_utf8(b.clone()).ok());
                let raw = match &text {
                    Some(t) => parse_config(t),
                    None => Err("the bundle has no config.toml (or it is not UTF-8)".into()),
                };
                let hostname = match raw.as_ref().ok().and_then(|c| c.hostname.clone()) {
                    Some(h) if h == HOSTNAME_PLACEHOLDER => Some(format!(
                        "{}.{}",
                        device_slug(&bundle.device_id),
                        self.domain
                    )),
                    other => other,
                };
                Prepared {
                    bundle,
                    text,
                    raw,
                    hostname,
                }
            })
            .collect();
        let needs_tree = prepared.iter().any(|p| {
            p.raw
                .as_ref()
                .is_ok_and(|c| c.parent_hostname.as_deref() == Some(PARENT_HOSTNAME_PLACEHOLDER))
        });
        let tree = if needs_tree {
            self.tree_for(&prepared).await
        } else {
            None
        };
        let hostnames: BTreeMap<&str, &str> = prepared
            .iter()
            .filter_map(|p| Some((p.bundle.device_id.as_str(), p.hostname.as_deref()?)))
            .collect();
        let present: BTreeSet<String> = prepared
            .iter()
            .map(|p| p.bundle.device_id.clone())
            .collect();
        for p in &prepared {
            let parent_hostname: Result<Option<String>, String> =
                match p.raw.as_ref().ok().and_then(|c| c.parent_hostname.clone()) {
                    Some(h) if h == PARENT_HOSTNAME_PLACEHOLDER => self
                        .placeholder_parent(&p.bundle.device_id, tree.as_ref(), &hostnames)
                        .map(Some),
                    other => Ok(other),
                };
            let fingerprint = p.bundle.fingerprint();
            let install_key = format!(
                "{fingerprint}|{}|{}",
                p.hostname.as_deref().unwrap_or(""),
                parent_hostname
                    .as_ref()
                    .ok()
                    .cloned()
                    .flatten()
                    .unwrap_or_default()
            );
            let existing = read(&self.devices).get(&p.bundle.device_id).cloned();
            if existing
                .as_ref()
                .is_some_and(|d| d.install_key == install_key)
            {
                continue;
            }
            let device = self
                .install(
                    p,
                    parent_hostname,
                    fingerprint,
                    install_key,
                    tree.as_ref(),
                    existing.as_deref(),
                )
                .await;
            write(&self.devices).insert(device.id.clone(), Arc::new(device));
        }
        let gone: Vec<String> = read(&self.devices)
            .keys()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            tracing::info!("device {id}: its bundle is gone; stopping it");
            write(&self.devices).remove(&id);
        }
        let names: HashMap<String, std::net::SocketAddr> = read(&self.devices)
            .values()
            .filter_map(|d| {
                Some((
                    d.hostname.clone()?.to_ascii_lowercase(),
                    d.server.as_ref()?.addr,
                ))
            })
            .collect();
        *write(&self.names) = names;
    }

    async fn tree_for(&self, prepared: &[Prepared]) -> Option<HubTree> {
        let key: String = prepared
            .iter()
            .map(|p| format!("{}={};", p.bundle.device_id, p.bundle.fingerprint()))
            .collect();
        let (stale, unresolved) = {
            let cache = lock(&self.tree);
            let unresolved = cache.tree.as_ref().is_none_or(|tree| {
                prepared.iter().any(|p| {
                    p.raw.as_ref().is_ok_and(|c| {
                        c.parent_hostname.as_deref() == Some(PARENT_HOSTNAME_PLACEHOLDER)
                    }) && tree.get(&p.bundle.device_id).cloned().flatten().is_none()
                })
            });
            let old = cache.fetched_at.is_none_or(|t| t.elapsed() >= TREE_RETRY);
            (cache.key != key, unresolved && old)
        };
        if stale || unresolved {
            let result = query_tree(&self.endpoint, &self.emulator_dir, now_secs()).await;
            let mut cache = lock(&self.tree);
            cache.fetched_at = Some(Instant::now());
            cache.key = key;
            match result {
                Ok(tree) => {
                    cache.tree = Some(tree);
                    cache.error = None;
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    if cache.error.as_deref() != Some(&message) {
                        tracing::warn!("edge-sim: cannot read the hub's device tree: {message}");
                    }
                    cache.error = Some(message);
                }
            }
        }
        lock(&self.tree).tree.clone()
    }

    fn placeholder_parent(
        &self,
        device_id: &str,
        tree: Option<&HubTree>,
        hostnames: &BTreeMap<&str, &str>,
    ) -> Result<String, String> {
        let Some(tree) = tree else {
            let why = lock(&self.tree)
                .error
                .clone()
                .unwrap_or_else(|| "it has not been read yet".into());
            return Err(format!(
                "config.toml asks for the parent's hostname ({PARENT_HOSTNAME_PLACEHOLDER}), and the hub's device tree that names the parent cannot be read: {why}"
            ));
        };
        let parent = tree.get(device_id).cloned().flatten().ok_or_else(|| {
            format!("config.toml asks for the parent's hostname ({PARENT_HOSTNAME_PLACEHOLDER}), but the hub lists no parent for {device_id} yet")
        })?;
        hostnames.get(parent.as_str()).map(|h| h.to_string()).ok_or_else(|| {
            format!("the parent {parent} of {device_id} has no bundle in this hierarchy yet, so its hostname is unknown")
        })
    }

    async fn install(
        self: &Arc<Self>,
        p: &Prepared,
        parent_hostname: Result<Option<String>, String>,
        fingerprint: String,
        install_key: String,
        tree: Option<&HubTree>,
        previous: Option<&Device>,
    ) -> Device {
        let id = p.bundle.device_id.clone();
        let root = self.state_dir.join(device_slug(&id));
        let (state, counters) = match previous {
            Some(prev) => (prev.state.clone(), prev.counters.clone()),
            None => (
                Arc::new(Mutex::new(DeviceState::new())),
                Arc::new(Counters::default()),
            ),
        };
        let mut device = Device {
            id: id.clone(),
            origin: p.bundle.origin.clone(),
            root: root.clone(),
            fingerprint,
            install_key,
            hostname: p.hostname.clone(),
            parent_hostname: None,
            checks: Vec::new(),
            failure: None,
            material: None,
            hub: None,
            sas_key: None,
            server: None,
            state,
            counters,
        };
        let fail = |device: &mut Device, check: &'static str, detail: String| {
            tracing::warn!("device {id}: not started: {check}: {detail}");
            device.checks = vec![Check {
                id: check,
                status: CheckStatus::Failed,
                detail: detail.clone(),
            }];
            device.failure = Some(format!("{check}: {detail}"));
        };
        let (Some(text), Ok(raw)) = (&p.text, &p.raw) else {
            let detail = p.raw.as_ref().err().cloned().unwrap_or_default();
            fail(&mut device, "config-toml", detail);
            return device;
        };
        let parent_hostname = match parent_hostname {
            Ok(h) => h,
            Err(e) => {
                fail(&mut device, "parent-hostname", e);
                return device;
            }
        };
        device.parent_hostname = parent_hostname.clone();
        let hostname = p.hostname.clone().unwrap_or_default();
        let filled = fill_placeholders(text, &hostname, parent_hostname.as_deref());
        let config = match parse_config(&filled) {
            Ok(c) => c,
            Err(e) => {
                fail(&mut device, "config-toml", e);
                return device;
            }
        };
        let _ = raw;
        let planned = match plan_install(&config, &p.bundle.files) {
            Ok(planned) => planned,
            Err(e) => {
                fail(&mut device, "bundle-files", e);
                return device;
            }
        };
        if let Err(e) = install_files(&root, &filled, &planned, &p.bundle.files) {
            fail(
                &mut device,
                "bundle-files",
                format!("installing into {} failed: {e}", root.display()),
            );
            return device;
        }
        let report = run_checks(
            &filled,
            &CheckContext {
                device_id: &id,
                root: &root,
                has_parent_in_tree: tree.and_then(|t| t.get(&id)).map(Option::is_some),
                now: now_secs(),
            },
        );
        device.checks = report.checks.clone();
        device.failure = report.first_failure();
        device.sas_key = config.provisioning.shared_access_key().map(str::to_string);
        let identity_pem = report
            .material
            .as_ref()
            .and_then(|m| m.identity_pem.clone());
        if device.sas_key.is_some() || identity_pem.is_some() {
            match self.endpoint.client(
                config.provisioning.iothub_hostname(),
                identity_pem.as_deref(),
            ) {
                Ok(client) => device.hub = Some(client),
                Err(e) => tracing::warn!("device {id}: no hub client: {e}"),
            }
        }
        for check in &report.checks {
            if check.status == CheckStatus::Warning {
                tracing::warn!("device {id}: check {}: {}", check.id, check.detail);
            }
        }
        match (&report.material, &device.failure) {
            (Some(material), _) => {
                let handler = Arc::new(Handler {
                    inner: Arc::downgrade(self),
                    device_id: id.clone(),
                });
                match serve(&material.server_identity, handler).await {
                    Ok(server) => {
                        tracing::info!(
                            "device {id}: installed bundle {} in {}; checks passed; edgeHub serves {} on {}{}",
                            device.fingerprint,
                            root.display(),
                            material.hostname,
                            server.addr,
                            material
                                .parent_hostname
                                .as_deref()
                                .map(|p| format!("; parent {p}"))
                                .unwrap_or_default()
                        );
                        device.server = Some(server);
                    }
                    Err(e) => {
                        device.failure =
                            Some(format!("edgehub-server: cannot listen on 127.0.0.1: {e}"));
                    }
                }
                device.material = Some(material.clone());
            }
            (None, Some(failure)) => {
                tracing::warn!(
                    "device {id}: installed bundle {} but the runtime does not start: check {failure}",
                    device.fingerprint
                );
            }
            (None, None) => {}
        }
        device
    }

    async fn read_twins(&self, device: &Arc<Device>) {
        let Some(hub) = &device.hub else {
            return;
        };
        let token = device.token();
        let agent = hub
            .module_twin(&device.id, "$edgeAgent", token.as_deref())
            .await;
        let hub_twin = if device.material.is_some() {
            Some(
                hub.module_twin(&device.id, "$edgeHub", token.as_deref())
                    .await,
            )
        } else {
            None
        };
        let mut state = lock(&device.state);
        let mut error = None;
        match agent {
            Ok(twin) => {
                let desired = twin.get("desired").cloned().unwrap_or(Value::Null);
                state.agent_twin_reported =
                    Some(strip_metadata(twin.get("reported").unwrap_or(&Value::Null)));
                let version = desired.get("$version").and_then(Value::as_i64);
                if device.material.is_some() {
                    match parse_agent_desired(&desired) {
                        Ok(deployment) => {
                            if state.desired_version != version || state.desired_status.code != 200
                            {
                                tracing::info!(
                                    "device {}: applying $edgeAgent desired version {}",
                                    device.id,
                                    version.unwrap_or(0)
                                );
                            }
                            state.deployment = Some(deployment);
                            state.desired_status = DesiredStatus::ok();
                        }
                        Err(status) => {
                            if state.desired_status != status {
                                tracing::warn!(
                                    "device {}: desired deployment rejected ({}): {}",
                                    device.id,
                                    status.code,
                                    status.description
                                );
                            }
                            state.desired_status = status;
                        }
                    }
                } else {
                    state.desired_status = DesiredStatus {
                        code: 500,
                        description: format!(
                            "the edge runtime is not running: check {}",
                            device.failure.as_deref().unwrap_or("failed")
                        ),
                    };
                }
                state.desired_version = version;
            }
            Err(e) => error = Some(e.message),
        }
        match hub_twin {
            Some(Ok(twin)) => state.hub_twin = Some(twin),
            Some(Err(e)) => error = error.or(Some(e.message)),
            None => {}
        }
        if error != state.hub_error {
            if let Some(e) = &error {
                tracing::warn!("device {}: {e}", device.id);
            } else {
                tracing::info!("device {}: the hub answers again", device.id);
            }
        }
        state.hub_error = error;
    }

    async fn check_link(&self, device: &Arc<Device>) {
        let (Some(material), Some(parent_hostname)) = (&device.material, &device.parent_hostname)
        else {
            return;
        };
        let addr = read(&self.names)
            .get(&parent_hostname.to_ascii_lowercase())
            .copied();
        let (link, detail) = match addr {
            None => {
                let why = format!(
                    "hostname {parent_hostname} does not resolve (no running device in the simulation has it)"
                );
                (LinkState::Down(why.clone()), why)
            }
            Some(addr) => {
                let request = Request::Connect {
                    device_id: device.id.clone(),
                };
                match exchange(&material.trust_roots, parent_hostname, addr, &request).await {
                    Ok(reply) => (
                        LinkState::Up,
                        match reply.error {
                            None => format!(
                                "TLS to {parent_hostname} verified; edgeHub accepted the connection"
                            ),
                            Some(e) => format!("TLS to {parent_hostname} verified; {e}"),
                        },
                    ),
                    Err(e) => (LinkState::Down(e.to_string()), e.to_string()),
                }
            }
        };
        let mut state = lock(&device.state);
        if state.link != link {
            match &link {
                LinkState::Up => tracing::info!(
                    "device {}: link to parent {parent_hostname} up: {detail}",
                    device.id
                ),
                _ => tracing::warn!(
                    "device {}: link to parent {parent_hostname} down: {detail}",
                    device.id
                ),
            }
        }
        state.link = link;
        state.link_detail = detail;
    }

    /// Applies the chain rule to every device and updates the module records.
    fn resolve(&self, devices: &[Arc<Device>]) {
        let by_hostname: HashMap<String, &str> = devices
            .iter()
            .filter_map(|d| Some((d.hostname.clone()?.to_ascii_lowercase(), d.id.as_str())))
            .collect();
        let nodes: Vec<DeviceNode> = devices
            .iter()
            .map(|d| {
                let state = lock(&d.state);
                let parent = d.parent_hostname.as_ref().map(|h| {
                    by_hostname
                        .get(&h.to_ascii_lowercase())
                        .map_or_else(|| format!("<{h}>"), |id| id.to_string())
                });
                let mut modules = Vec::new();
                if !state.agent_started {
                    if let Some(m) = &d.material {
                        modules.push(ModuleSpec {
                            name: "edgeAgent".into(),
                            image: m.agent_image.clone(),
                            wants_running: true,
                            env: BTreeMap::new(),
                        });
                    }
                } else if let Some(deployment) = &state.deployment {
                    modules.push(deployment.edge_hub.spec.clone());
                    modules.extend(deployment.modules.values().map(|m| m.spec.clone()));
                }
                DeviceNode {
                    id: d.id.clone(),
                    parent,
                    link: if d.is_top() {
                        LinkState::Up
                    } else {
                        state.link.clone()
                    },
                    runtime_up: d.material.is_some() && state.agent_started,
                    modules,
                }
            })
            .collect();
        let outcomes = resolve_modules(&nodes);
        let now = twin_time(jiff::Timestamp::now());
        for device in devices {
            let mut state = lock(&device.state);
            let empty = BTreeMap::new();
            let mine = outcomes.get(&device.id).unwrap_or(&empty);
            if device.material.is_none() {
                let why = format!(
                    "the edge runtime is not running: check {}",
                    device.failure.as_deref().unwrap_or("failed")
                );
                if state.agent.runtime_status != "failed" || state.agent.status_description != why {
                    state.agent.runtime_status = "failed".into();
                    state.agent.status_description = why;
                    state.agent.exit_code = 1;
                    state.agent.last_exit_time_utc = Some(now.clone());
                }
                state.agent_started = false;
                state.edge_hub = None;
                state.modules.clear();
                state.edge_hub_running = false;
                continue;
            }
            if !state.agent_started {
                match mine.get("edgeAgent") {
                    Some(ModuleOutcome::Running) => {
                        tracing::info!(
                            "device {}: edgeAgent started ({})",
                            device.id,
                            device
                                .material
                                .as_ref()
                                .map(|m| m.agent_image.as_str())
                                .unwrap_or("")
                        );
                        state.agent_started = true;
                        state.agent = advance(Some(&state.agent), &ModuleOutcome::Running, &now);
                    }
                    Some(ModuleOutcome::Backoff(why)) => {
                        let why = format!("edgeAgent {why}");
                        if state.agent.status_description != why {
                            tracing::warn!("device {}: {why}", device.id);
                        }
                        state.agent =
                            advance(Some(&state.agent), &ModuleOutcome::Backoff(why), &now);
                    }
                    _ => {}
                }
                continue;
            }
            state.agent = advance(Some(&state.agent), &ModuleOutcome::Running, &now);
            let Some(deployment) = state.deployment.clone() else {
                continue;
            };
            let previous_hub = state.edge_hub.clone();
            if let Some(outcome) = mine.get("edgeHub") {
                let record = advance(previous_hub.as_ref(), outcome, &now);
                log_transition(&device.id, "edgeHub", previous_hub.as_ref(), &record);
                state.edge_hub_running = record.runtime_status == "running";
                state.edge_hub = Some(record);
            }
            let mut next = BTreeMap::new();
            for name in deployment.modules.keys() {
                if let Some(outcome) = mine.get(name) {
                    let previous = state.modules.get(name);
                    let record = advance(previous, outcome, &now);
                    log_transition(&device.id, name, previous, &record);
                    next.insert(name.clone(), record);
                }
            }
            state.modules = next;
        }
    }

    async fn report(&self, device: &Arc<Device>) {
        let Some(hub) = &device.hub else {
            return;
        };
        let (agent_patch, hub_patch) = {
            let mut state = lock(&device.state);
            if state.hub_error.is_some() || state.agent_twin_reported.is_none() {
                return;
            }
            let bootstrap = device
                .material
                .as_ref()
                .map(|m| m.agent_image.clone())
                .unwrap_or_default();
            let created = device.material.is_some() && state.agent_started;
            let agent_doc = agent_reported(&AgentReport {
                status: &state.desired_status,
                desired_version: state.desired_version,
                deployment: if created {
                    state.deployment.as_ref()
                } else {
                    None
                },
                agent: &state.agent,
                bootstrap_image: &bootstrap,
                edge_hub: state.edge_hub.as_ref(),
                modules: &state.modules,
            });
            let current = state.agent_twin_reported.clone().unwrap_or(Value::Null);
            let agent_patch = merge_patch(&prune_empty(&current), &prune_empty(&agent_doc));
            let hub_patch = if state.edge_hub_running {
                update_clients(&mut state, self.interval);
                let twin = state.hub_twin.clone().unwrap_or(Value::Null);
                let desired = twin.get("desired").cloned().unwrap_or(Value::Null);
                let status = edge_hub_desired_status(&desired);
                let version = desired.get("$version").and_then(Value::as_i64);
                let doc = edge_hub_reported(&status, version, &state.clients);
                let current = strip_metadata(twin.get("reported").unwrap_or(&Value::Null));
                merge_patch(&prune_empty(&current), &prune_empty(&doc))
            } else {
                None
            };
            (agent_patch, hub_patch)
        };
        let token = device.token();
        for (module, patch) in [("$edgeAgent", agent_patch), ("$edgeHub", hub_patch)] {
            let Some(patch) = patch else {
                continue;
            };
            match hub
                .patch_reported(&device.id, module, &patch, token.as_deref())
                .await
            {
                Ok(()) => {
                    let mut state = lock(&device.state);
                    state.reported_patches += 1;
                    if module == "$edgeAgent" {
                        state.agent_twin_reported = None;
                    }
                    tracing::info!(
                        "device {}: reported {module} properties ({} change(s))",
                        device.id,
                        patch.as_object().map_or(0, |o| o.len())
                    );
                }
                Err(e) => {
                    tracing::warn!("device {}: {}", device.id, e.message);
                    lock(&device.state).hub_error = Some(e.message);
                }
            }
        }
    }

    async fn send_telemetry(self: &Arc<Self>, device: &Arc<Device>) {
        let sensors: Vec<String> = {
            let state = lock(&device.state);
            let Some(deployment) = &state.deployment else {
                return;
            };
            state
                .modules
                .iter()
                .filter(|(name, record)| {
                    record.runtime_status == "running"
                        && deployment
                            .modules
                            .get(*name)
                            .is_some_and(|m| m.spec.image.contains(SENSOR_IMAGE_MARKER))
                })
                .map(|(name, _)| name.clone())
                .collect()
        };
        if sensors.is_empty() || device.material.is_none() {
            return;
        }
        let hub_running = lock(&device.state).edge_hub_running;
        for module in sensors {
            let counters = &device.counters;
            if !hub_running {
                counters.fail(
                    &counters.send_failed,
                    &format!("edgeHub is not running on {}", device.id),
                );
                continue;
            }
            let n = counters.sent.load(Ordering::Relaxed)
                + counters.send_failed.load(Ordering::Relaxed);
            let message = Message {
                device_id: device.id.clone(),
                module_id: module.clone(),
                token: device.token(),
                body: sensor_reading(n),
                hops: vec![device.id.clone()],
            };
            match self.deliver(device, &message).await {
                Ok(()) => {
                    let sent = counters.sent.fetch_add(1, Ordering::Relaxed) + 1;
                    let via = if device.is_top() {
                        "directly".to_string()
                    } else {
                        format!("via {}", device.parent_hostname.as_deref().unwrap_or("?"))
                    };
                    tracing::info!(
                        "device {}: {module} message delivered {via} (sent {sent})",
                        device.id
                    );
                }
                Err(e) => {
                    counters.fail(&counters.send_failed, &e);
                    tracing::warn!("device {}: {module} message not delivered: {e}", device.id);
                }
            }
        }
    }

    /// Passes a message one hop up: a top-layer device posts it to the hub with the sender's
    /// credential, any other device hands it to its parent over TLS.
    fn deliver<'a>(
        self: &'a Arc<Self>,
        via: &'a Arc<Device>,
        message: &'a Message,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if via.is_top() {
                return self.post_to_hub(via, message).await;
            }
            let parent = via.parent_hostname.clone().unwrap_or_default();
            let material = via
                .material
                .as_ref()
                .ok_or_else(|| format!("device {} has no running runtime", via.id))?;
            let addr = read(&self.names)
                .get(&parent.to_ascii_lowercase())
                .copied()
                .ok_or_else(|| format!("{}: parent hostname {parent} does not resolve", via.id))?;
            let request = Request::Telemetry {
                device_id: message.device_id.clone(),
                module_id: message.module_id.clone(),
                token: message.token.clone(),
                body: message.body.clone(),
                hops: message.hops.clone(),
            };
            let reply = exchange(&material.trust_roots, &parent, addr, &request)
                .await
                .map_err(|e| format!("{} → {parent}: {e}", via.id))?;
            match reply.error {
                None if reply.ok => Ok(()),
                error => Err(format!("{parent} refused: {}", error.unwrap_or_default())),
            }
        })
    }

    async fn post_to_hub(&self, top: &Arc<Device>, message: &Message) -> Result<(), String> {
        // SAS senders' tokens travel with the message; an X509 sender's credential is its TLS
        // client certificate, which the simulation holds in the sender's own hub client.
        let client = if message.token.is_some() {
            top.hub.clone()
        } else {
            read(&self.devices)
                .get(&message.device_id)
                .and_then(|d| d.hub.clone())
        }
        .ok_or_else(|| format!("{} has no hub client to post with", top.id))?;
        let token = message.token.as_deref();
        let result = client
            .send_event(
                &message.device_id,
                Some(&message.module_id),
                &message.body,
                token,
            )
            .await;
        let result = match result {
            Err(e) if e.code.as_deref() == Some("ModuleNotFound") || e.status == Some(404) => {
                // A real edgeAgent registers module identities; device credentials cannot in
                // the emulator, so the message goes to the device route instead.
                let key = format!("{}/{}", message.device_id, message.module_id);
                let first = lock(&top.state).device_route_noted.insert(key.clone());
                if first {
                    tracing::warn!(
                        "device {}: module identity {key} is not registered in the hub; posting its telemetry on the device route of {}",
                        top.id,
                        message.device_id
                    );
                }
                client
                    .send_event(&message.device_id, None, &message.body, token)
                    .await
            }
            other => other,
        };
        match result {
            Ok(()) => {
                top.counters.posted_to_hub.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(e.message),
        }
    }

    fn build_snapshot(
        &self,
        ticks: u64,
        source_error: Option<String>,
        devices: &[Arc<Device>],
    ) -> Snapshot {
        let by_hostname: HashMap<String, String> = devices
            .iter()
            .filter_map(|d| Some((d.hostname.clone()?.to_ascii_lowercase(), d.id.clone())))
            .collect();
        let module_snapshot = |record: &ModuleRecord, image: &str| ModuleSnapshot {
            runtime_status: record.runtime_status.clone(),
            status_description: record.status_description.clone(),
            image: image.to_string(),
        };
        let devices = devices
            .iter()
            .map(|d| {
                let state = lock(&d.state);
                let deployment = state.deployment.as_ref();
                let snapshot = DeviceSnapshot {
                    device_id: d.id.clone(),
                    origin: d.origin.clone(),
                    root: d.root.clone(),
                    hostname: d.hostname.clone(),
                    parent_hostname: d.parent_hostname.clone(),
                    parent_id: d
                        .parent_hostname
                        .as_ref()
                        .and_then(|h| by_hostname.get(&h.to_ascii_lowercase()).cloned()),
                    port: d.server.as_ref().map(|s| s.addr.port()),
                    bundle_fingerprint: d.fingerprint.clone(),
                    failure: d.failure.clone(),
                    checks: d.checks.clone(),
                    agent_running: d.material.is_some() && state.agent_started,
                    agent: module_snapshot(
                        &state.agent,
                        d.material
                            .as_ref()
                            .map(|m| m.agent_image.as_str())
                            .unwrap_or(""),
                    ),
                    link: d
                        .parent_hostname
                        .as_ref()
                        .filter(|_| d.material.is_some())
                        .map(|p| LinkSnapshot {
                            parent_hostname: p.clone(),
                            ok: state.link == LinkState::Up,
                            detail: state.link_detail.clone(),
                        }),
                    desired_version: state.desired_version,
                    last_desired_status: state.desired_status.clone(),
                    edge_hub: state.edge_hub.as_ref().map(|r| {
                        module_snapshot(
                            r,
                            deployment
                                .map(|dep| dep.edge_hub.spec.image.as_str())
                                .unwrap_or(""),
                        )
                    }),
                    modules: state
                        .modules
                        .iter()
                        .map(|(name, r)| {
                            let image = deployment
                                .and_then(|dep| dep.modules.get(name))
                                .map(|m| m.spec.image.as_str())
                                .unwrap_or("");
                            (name.clone(), module_snapshot(r, image))
                        })
                        .collect(),
                    clients: state
                        .clients
                        .iter()
                        .map(|(k, v)| (k.clone(), v.status.clone()))
                        .collect(),
                    telemetry: d.counters.snapshot(),
                    reported_patches: state.reported_patches,
                    hub_error: state.hub_error.clone(),
                };
                (d.id.clone(), snapshot)
            })
            .collect();
        Snapshot {
            ticks,
            source_error,
            devices,
        }
    }
}

fn log_transition(
    device: &str,
    module: &str,
    previous: Option<&ModuleRecord>,
    next: &ModuleRecord,
) {
    let changed = previous.is_none_or(|p| {
        p.runtime_status != next.runtime_status || p.status_description != next.status_description
    });
    if !changed {
        return;
    }
    if next.runtime_status == "backoff" {
        tracing::warn!(
            "device {device}: module {module} backoff: {}",
            next.status_description
        );
    } else {
        tracing::info!("device {device}: module {module} {}", next.runtime_status);
    }
}

/// Children seen within the last few intervals are connected; others that were are disconnected.
fn update_clients(state: &mut DeviceState, interval: Duration) {
    let now = twin_time(jiff::Timestamp::now());
    let stale = interval * CLIENT_STALE_INTERVALS;
    let seen: Vec<(String, bool)> = state
        .client_seen
        .iter()
        .map(|(id, at)| (id.clone(), at.elapsed() <= stale))
        .collect();
    for (id, connected) in seen {
        match (state.clients.get_mut(&id), connected) {
            (None, true) => {
                state.clients.insert(
                    id,
                    ClientRecord {
                        status: "connected".into(),
                        last_connected_time_utc: now.clone(),
                        last_disconnect_time_utc: None,
                    },
                );
            }
            (Some(record), true) if record.status != "connected" => {
                record.status = "connected".into();
                record.last_connected_time_utc = now.clone();
            }
            (Some(record), false) if record.status == "connected" => {
                record.status = "disconnected".into();
                record.last_disconnect_time_utc = Some(now.clone());
            }
            _ => {}
        }
    }
}

/// Removes empty objects (a merge patch cannot express them, and the hub may drop them).
fn prune_empty(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter_map(|(k, v)| {
                    let pruned = prune_empty(v);
                    match &pruned {
                        Value::Object(m) if m.is_empty() => None,
                        Value::Null => None,
                        _ => Some((k.clone(), pruned)),
                    }
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A SimulatedTemperatureSensor-shaped reading.
fn sensor_reading(n: u64) -> Value {
    let t = n as f64;
    json!({
        "machine": {"temperature": 21.0 + (t * 0.37) % 80.0, "pressure": 1.0 + (t * 0.05) % 9.0},
        "ambient": {"temperature": 20.5 + (t * 0.01) % 1.0, "humidity": 25},
        "timeCreated": jiff::Timestamp::now().to_string(),
    })
}
