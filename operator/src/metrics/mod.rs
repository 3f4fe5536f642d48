//! Prometheus metrics and health endpoints of the operator: `/metrics` (OpenMetrics text),
//! `/healthz` (the process serves) and `/readyz` (the controller runs).
//!
//! docs/monitoring.md lists every metric; [`fleet`] holds the per-hierarchy gauges.

pub mod fleet;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::EdgeHierarchyStatus;
use crate::iothub::HubCallCounters;
use fleet::Fleet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
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
        Self {
            registry,
            reconciles,
            duration,
            steps,
            fleet,
            ready: AtomicBool::new(false),
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

async fn readiness(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Serves the endpoints on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} for metrics: {e}; choose another --metrics-addr")
    })?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
