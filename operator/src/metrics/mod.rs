//! Prometheus metrics and health endpoints of the operator: `/metrics` (OpenMetrics text),
//! `/healthz` (the process serves) and `/readyz` (the controller runs, or under leader election
//! this replica stands by).
//!
//! docs/monitoring.md lists every metric; [`fleet`] holds the per-hierarchy gauges.

pub mod fleet;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::EdgeHierarchyStatus;
use crate::iothub::HubCallCounters;
use crate::leadership::Role;
use fleet::Fleet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    lease: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
}

/// Buckets of the reconcile and step durations, in seconds.
const DURATION_BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0];

/// What the controller records.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    steps: Family<StepLabels, Histogram, fn() -> Histogram>,
    fleet: Arc<Fleet>,
    ready: AtomicBool,
    leader: Family<LeaseLabels, Gauge>,
    terms: Family<LeaseLabels, Counter>,
    /// This replica's part under leader election; `None` without it.
    role: Mutex<Option<Role>>,
}

impl Metrics {
    /// Adds the EST server's counters (only when it runs).
    pub fn with_est(mut self, est: &crate::est::EstMetrics) -> Self {
        est.register(&mut self.registry);
        self
    }

    pub fn new(hub_calls: &HubCallCounters) -> Self {
        let mut registry = Registry::with_prefix("edge_hierarchy");
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles of EdgeHierarchy resources by outcome (ok, error)",
            reconciles.clone(),
        );
        let duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            duration.clone(),
        );
        let steps: Family<StepLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        registry.register(
            "reconcile_step_duration_seconds",
            "Duration of one step of a reconcile (spec, certificates, devices, configurations, certificate_secrets, bundles, deployments, status)",
            steps.clone(),
        );
        hub_calls.register(&mut registry);
        let fleet = Arc::new(Fleet::default());
        registry.register_collector(Box::new(fleet.clone()));
        let leader = Family::<LeaseLabels, Gauge>::default();
        registry.register(
            "operator_leader",
            "1 while this replica holds the lease and runs the controller, 0 while it stands by (only with --leader-election)",
            leader.clone(),
        );
        let terms = Family::<LeaseLabels, Counter>::default();
        registry.register(
            "operator_leader_terms",
            "Times this replica took the lease and started the controller (only with --leader-election)",
            terms.clone(),
        );
        Self {
            registry,
            reconciles,
            duration,
            steps,
            fleet,
            ready: AtomicBool::new(false),
            leader,
            terms,
            role: Mutex::new(None),
        }
    }

    /// Records one reconcile that started at `started`.
    pub fn reconciled(&self, started: Instant, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        self.duration.observe(started.elapsed().as_secs_f64());
    }

    /// Records one step of a reconcile that started at `started`: where a reconcile's time goes.
    pub fn step_done(&self, step: &'static str, started: Instant) {
        self.steps
            .get_or_create(&StepLabels { step })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records the status just written for the hierarchy `namespace/name`.
    pub fn observe_status(&self, namespace: &str, name: &str, status: &EdgeHierarchyStatus) {
        self.fleet.observe(namespace, name, status);
    }

    /// Drops the gauges of a hierarchy that is gone.
    pub fn forget_hierarchy(&self, namespace: &str, name: &str) {
        self.fleet.forget(namespace, name);
    }

    /// Marks the controller as running (for `/readyz`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Records this replica's part under leader election of `lease`.
    pub fn set_role(&self, lease: &str, role: Role) {
        let labels = LeaseLabels {
            lease: lease.to_string(),
        };
        let mut current = self.role.lock().expect("role");
        if role == Role::Leader && current.as_ref() != Some(&Role::Leader) {
            self.terms.get_or_create(&labels).inc();
        }
        self.leader
            .get_or_create(&labels)
            .set(i64::from(role == Role::Leader));
        *current = Some(role);
    }

    /// What `/readyz` answers now.
    pub fn readiness(&self) -> (StatusCode, String) {
        let role = self.role.lock().expect("role").clone();
        readiness(role.as_ref(), self.ready.load(Ordering::Relaxed))
    }

    /// The metrics in OpenMetrics text form.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

async fn metrics_text(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

/// `/readyz`: ready once the controller runs; under leader election a standby is ready too (it
/// is what takes over), and the body says which part this replica plays.
fn readiness(role: Option<&Role>, controller_running: bool) -> (StatusCode, String) {
    match (role, controller_running) {
        (None, true) => (StatusCode::OK, "ready\n".into()),
        (None, false) | (Some(Role::Starting), _) => {
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
        }
        (Some(Role::Leader), true) => (StatusCode::OK, "leader\n".into()),
        (Some(Role::Leader), false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "leader, starting the controller\n".into(),
        ),
        (Some(Role::Standby { holder }), _) => (
            StatusCode::OK,
            format!(
                "standby (holder: {})\n",
                holder.as_deref().unwrap_or("none")
            ),
        ),
    }
}

async fn readiness_endpoint(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    m.readiness()
}

/// Serves the endpoints on `addr` until the process ends. With `addr_file`, writes the address
/// it bound there (port 0 picks a free port: replicas sharing a host network do not collide).
pub async fn serve(
    addr: SocketAddr,
    addr_file: Option<PathBuf>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness_endpoint))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} for metrics: {e}; choose another --metrics-addr")
    })?;
    let bound = listener.local_addr()?;
    if let Some(path) = addr_file {
        write_address(&path, bound)?;
    }
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app).await?;
    Ok(())
}

/// Writes `addr` to `path` whole (a temporary file renamed over it), so a probe never reads
/// half an address.
fn write_address(path: &std::path::Path, addr: SocketAddr) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{addr}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot write the metrics address to {}: {e}; choose a writable --metrics-addr-file",
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_says_leader_or_standby_and_who_holds_the_lease() {
        let standby = Role::Standby {
            holder: Some("op-1".into()),
        };
        assert_eq!(
            readiness(Some(&standby), false),
            (StatusCode::OK, "standby (holder: op-1)\n".into())
        );
        assert_eq!(
            readiness(Some(&Role::Standby { holder: None }), false),
            (StatusCode::OK, "standby (holder: none)\n".into())
        );
        assert_eq!(
            readiness(Some(&Role::Leader), true),
            (StatusCode::OK, "leader\n".into())
        );
        assert_eq!(
            readiness(Some(&Role::Leader), false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            readiness(Some(&Role::Starting), false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(readiness(None, true), (StatusCode::OK, "ready\n".into()));
        assert_eq!(readiness(None, false).0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn the_leader_gauge_follows_the_role_and_terms_are_counted() {
        let m = Metrics::new(&HubCallCounters::new());
        m.set_role("shard-a", Role::Standby { holder: None });
        assert!(
            m.encode()
                .contains("edge_hierarchy_operator_leader{lease=\"shard-a\"} 0")
        );
        m.set_role("shard-a", Role::Leader);
        m.set_role("shard-a", Role::Leader);
        let text = m.encode();
        assert!(
            text.contains("edge_hierarchy_operator_leader{lease=\"shard-a\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edge_hierarchy_operator_leader_terms_total{lease=\"shard-a\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn the_bound_address_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addr");
        write_address(&path, "127.0.0.1:41234".parse().unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "127.0.0.1:41234\n");
        assert!(
            write_address(
                &dir.path().join("missing/addr"),
                "127.0.0.1:1".parse().unwrap()
            )
            .is_err()
        );
    }

    #[test]
    fn reconciles_and_hub_calls_are_exported() {
        let hub = HubCallCounters::new();
        hub.record(
            crate::iothub::HubOperation::Query,
            crate::iothub::CallResult::Status(200),
        );
        let m = Metrics::new(&hub);
        m.reconciled(Instant::now(), true);
        m.reconciled(Instant::now(), false);
        m.step_done("bundles", Instant::now());
        let text = m.encode();
        assert!(
            text.contains(
                "edge_hierarchy_reconcile_step_duration_seconds_count{step=\"bundles\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("edge_hierarchy_reconciles_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edge_hierarchy_reconciles_total{outcome=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edge_hierarchy_reconcile_duration_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("edge_hierarchy_iothub_calls_total"), "{text}");
    }
}
