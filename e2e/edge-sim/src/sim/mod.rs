//! The simulated IoT Edge runtimes of one hierarchy. Every interval one tick runs the phases in
//! order, each in its own module:
//! - [`bundles`]: re-read the bundles, install new revisions as `install.sh` would, run the
//!   checks and serve each device's edgeHub over TLS;
//! - [`twins`]: read the desired twins from the hub and report `$edgeAgent`/`$edgeHub`
//!   properties when they changed;
//! - [`links`]: open each child's TLS link to its parent, and answer its children on its own;
//! - [`leaves`]: each leaf device (from a leaf bundle) connects through its gateway and sends a
//!   message with its own SAS token;
//! - [`modules`]: resolve images by the chain rule and update the module records;
//! - [`telemetry`]: send SimulatedTemperatureSensor telemetry up the chain of parents;
//! - [`snapshot`]: what the tick leaves for callers to read.

mod bundles;
mod leaves;
mod links;
mod modules;
mod snapshot;
mod telemetry;
mod twins;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::Value;

use crate::chain::LinkState;
use crate::checks::{Check, DeviceMaterial};
use crate::hub::{HubEndpoint, HubHttp, TOKEN_TTL_SECS, device_token};
use crate::link::LinkServer;
use crate::reported::{AgentDeployment, ClientRecord, DesiredStatus, ModuleRecord};
use crate::source::BundleSource;

use bundles::TreeCache;
pub use leaves::LeafSnapshot;
pub use snapshot::{
    DeviceSnapshot, HandshakeCounts, LinkSnapshot, ModuleSnapshot, Snapshot, TelemetryCounts,
};

/// Marker of the SimulatedTemperatureSensor image.
pub const SENSOR_IMAGE_MARKER: &str = "simulated-temperature-sensor";
/// Domain of the hostnames the simulation assigns (`<slug>.edge.sim`).
pub const DEFAULT_DOMAIN: &str = "edge.sim";

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

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    send_failed: AtomicU64,
    forwarded: AtomicU64,
    forward_failed: AtomicU64,
    posted_to_hub: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// TLS handshakes this device (as a child) began with its parent, and how many failed.
    handshakes: AtomicU64,
    handshake_failures: AtomicU64,
    /// Exchanges that never reached the handshake (TCP refused, no answer).
    connect_failures: AtomicU64,
    last_handshake_error: Mutex<Option<String>>,
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
    fn links(&self) -> HandshakeCounts {
        HandshakeCounts {
            handshakes: self.handshakes.load(Ordering::Relaxed),
            handshake_failures: self.handshake_failures.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            last_handshake_error: lock(&self.last_handshake_error).clone(),
        }
    }
    /// Counts one exchange with the parent by how far it got.
    fn count_exchange<T>(&self, result: &Result<T, crate::link::LinkError>) {
        use crate::link::LinkError;
        match result {
            Err(LinkError::Connect(_)) => {
                self.connect_failures.fetch_add(1, Ordering::Relaxed);
            }
            Err(LinkError::Handshake(e)) => {
                self.handshakes.fetch_add(1, Ordering::Relaxed);
                self.handshake_failures.fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_handshake_error) = Some(e.clone());
            }
            Ok(_) | Err(LinkError::Exchange(_)) => {
                self.handshakes.fetch_add(1, Ordering::Relaxed);
            }
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
            agent: ModuleRecord::unknown(),
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

struct Inner {
    source: Arc<dyn BundleSource>,
    emulator_dir: PathBuf,
    state_dir: PathBuf,
    interval: Duration,
    domain: String,
    endpoint: HubEndpoint,
    names: RwLock<HashMap<String, std::net::SocketAddr>>,
    devices: RwLock<BTreeMap<String, Arc<Device>>>,
    leaves: RwLock<BTreeMap<String, Arc<leaves::Leaf>>>,
    tree: Mutex<TreeCache>,
    snapshot: Mutex<Snapshot>,
    ticks: AtomicU64,
    /// Certificates enrolled over EST (see `crate::est`).
    est: crate::est::Est,
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
            leaves: RwLock::new(BTreeMap::new()),
            tree: Mutex::new(TreeCache::default()),
            snapshot: Mutex::new(Snapshot::default()),
            ticks: AtomicU64::new(0),
            est: crate::est::Est::default(),
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

    /// What EST did per device (renewals, the certificates held).
    pub fn est_counts(&self) -> BTreeMap<String, crate::est::EstCounts> {
        self.inner.est.counts()
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

impl Inner {
    /// One poll: every phase in order, then the snapshot.
    async fn tick(self: &Arc<Self>) {
        let source_error = match self.source.list().await {
            Ok(bundles) => {
                let (leaf_bundles, bundles): (Vec<_>, Vec<_>) = bundles
                    .into_iter()
                    .partition(|b| crate::leaf::is_leaf_bundle(&b.files));
                // aziot-certd's part first: EST enrollments and renewals that are due.
                let bundles = join_all(bundles.into_iter().map(|b| self.est.materialize(b))).await;
                self.sync_bundles(bundles).await;
                self.sync_leaves(leaf_bundles);
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
        let leaves: Vec<Arc<leaves::Leaf>> = read(&self.leaves).values().cloned().collect();
        join_all(leaves.iter().map(|l| self.run_leaf(l))).await;
        self.resolve(&devices);
        join_all(devices.iter().map(|d| self.report(d))).await;
        join_all(devices.iter().map(|d| self.send_telemetry(d))).await;
        let ticks = self.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot = self.build_snapshot(ticks, source_error, &devices);
        *lock(&self.snapshot) = snapshot;
    }
}
