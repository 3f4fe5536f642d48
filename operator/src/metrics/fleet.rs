//! Per-hierarchy gauges that operations teams alert on: certificate expiry and overdue renewals,
//! devices by state, drift, failing modules, and the Ready and Stalled conditions.
//!
//! Each status the operator writes is reduced to a [`HierarchySnapshot`] (pure, from the status
//! alone). The snapshots are encoded on every scrape, so "seconds to expiry" is measured from
//! the scrape, not from the last reconcile, and a hierarchy that is gone is forgotten.

use std::collections::BTreeMap;
use std::sync::Mutex;

use jiff::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::api::{DeviceState, EdgeHierarchyStatus, listed_items};

/// Every device state, with the name the status and the `state` label use.
pub const DEVICE_STATES: [(DeviceState, &str); 6] = [
    (DeviceState::Pending, "Pending"),
    (DeviceState::Ready, "Ready"),
    (DeviceState::Drifted, "Drifted"),
    (DeviceState::Conflict, "Conflict"),
    (DeviceState::Error, "Error"),
    (DeviceState::Deleting, "Deleting"),
];

/// The conditions exported as `edge_hierarchy_condition{condition}`.
pub const EXPORTED_CONDITIONS: [&str; 2] = ["Ready", "Stalled"];

/// What the gauges of one hierarchy are computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HierarchySnapshot {
    /// The earliest `notAfter` of a device certificate or the root CA.
    pub earliest_expiry: Option<Timestamp>,
    /// The earliest moment a device certificate is due for re-issue.
    pub earliest_renewal: Option<Timestamp>,
    /// Device counts in [`DEVICE_STATES`] order.
    pub devices: [u32; DEVICE_STATES.len()],
    /// Drift entries over all devices.
    pub drift_items: u32,
    /// Failing modules over all devices.
    pub modules_failing: u32,
    /// Whether each of [`EXPORTED_CONDITIONS`] is True.
    pub conditions: [bool; EXPORTED_CONDITIONS.len()],
}

impl HierarchySnapshot {
    /// Reduces a status to the numbers the gauges show.
    pub fn of(status: &EdgeHierarchyStatus) -> Self {
        let mut snapshot = HierarchySnapshot::default();
        let root_expiry = status
            .root_ca
            .as_ref()
            .and_then(|r| r.not_after.as_ref())
            .map(|t| t.0);
        let certificates = status.devices.iter().filter_map(|d| d.certificate.as_ref());
        snapshot.earliest_expiry = certificates
            .clone()
            .filter_map(|c| c.not_after.as_ref().map(|t| t.0))
            .chain(root_expiry)
            .min();
        snapshot.earliest_renewal = status.next_renewal_time.as_ref().map(|t| t.0);
        for device in &status.devices {
            if let Some(i) = DEVICE_STATES.iter().position(|(s, _)| *s == device.state) {
                snapshot.devices[i] += 1;
            }
            // A written status may end a list with `and N more`; it counts as N.
            snapshot.drift_items += listed_items(&device.drift) as u32;
            snapshot.modules_failing += device
                .modules
                .as_ref()
                .map_or(0, |m| listed_items(&m.failing) as u32);
        }
        for (i, type_) in EXPORTED_CONDITIONS.iter().enumerate() {
            snapshot.conditions[i] = status
                .conditions
                .iter()
                .any(|c| c.type_ == *type_ && c.status == "True");
        }
        snapshot
    }

    /// Seconds from `now` to the earliest expiry (negative once expired).
    pub fn expiry_seconds(&self, now: Timestamp) -> Option<f64> {
        self.earliest_expiry.map(|t| seconds_between(now, t))
    }

    /// Seconds since the earliest certificate became due without being re-issued (0 when none
    /// is due). The operator re-issues within one reconcile of the due time, so anything
    /// lasting longer means renewal is failing.
    pub fn renewal_overdue_seconds(&self, now: Timestamp) -> f64 {
        self.earliest_renewal
            .map_or(0.0, |t| seconds_between(t, now).max(0.0))
    }
}

fn seconds_between(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_millisecond() - from.as_millisecond()) as f64 / 1000.0
}

/// How one per-hierarchy gauge is read from a snapshot at the scrape's time (`None`: no series).
type GaugeOf = fn(&HierarchySnapshot, Timestamp) -> Option<f64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct HierarchyLabels {
    namespace: String,
    hierarchy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    namespace: String,
    hierarchy: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    namespace: String,
    hierarchy: String,
    condition: String,
}

/// The latest snapshot of every hierarchy this operator reconciles.
#[derive(Debug, Default)]
pub struct Fleet {
    snapshots: Mutex<BTreeMap<HierarchyLabels, HierarchySnapshot>>,
}

impl Fleet {
    /// Records the status just written for `namespace/name`.
    pub fn observe(&self, namespace: &str, name: &str, status: &EdgeHierarchyStatus) {
        self.lock()
            .insert(labels(namespace, name), HierarchySnapshot::of(status));
    }

    /// Drops a hierarchy that was deleted (its series disappear from the next scrape).
    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock().remove(&labels(namespace, name));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<HierarchyLabels, HierarchySnapshot>> {
        self.snapshots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes every gauge as of `now`.
    fn encode_at(&self, mut encoder: DescriptorEncoder, now: Timestamp) -> std::fmt::Result {
        let snapshots = self.lock().clone();
        let per_hierarchy: [(&str, &str, GaugeOf); 5] = [
            (
                "certificate_expiry_seconds",
                "Seconds from this scrape to the earliest expiry of a device certificate or the root CA (negative once expired)",
                |s, now| s.expiry_seconds(now),
            ),
            (
                "certificate_expiry_timestamp_seconds",
                "Unix time of the earliest expiry of a device certificate or the root CA",
                |s, _| {
                    s.earliest_expiry
                        .map(|t| t.as_millisecond() as f64 / 1000.0)
                },
            ),
            (
                "certificate_renewal_overdue_seconds",
                "Seconds since the earliest device certificate became due for re-issue without being re-issued (0 when none is due)",
                |s, now| Some(s.renewal_overdue_seconds(now)),
            ),
            (
                "drift_items",
                "Drift entries in the hierarchy's status (what differed from the spec at the last sync)",
                |s, _| Some(f64::from(s.drift_items)),
            ),
            (
                "modules_failing",
                "Modules the devices' edgeAgents report as not running as desired",
                |s, _| Some(f64::from(s.modules_failing)),
            ),
        ];
        for (name, help, value) in per_hierarchy {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, snapshot) in &snapshots {
                if let Some(v) = value(snapshot, now) {
                    ConstGauge::new(v).encode(family.encode_family(labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "devices",
            "Devices of the hierarchy by state",
            None,
            MetricType::Gauge,
        )?;
        for (labels, snapshot) in &snapshots {
            for (i, (_, state)) in DEVICE_STATES.iter().enumerate() {
                let labels = StateLabels {
                    namespace: labels.namespace.clone(),
                    hierarchy: labels.hierarchy.clone(),
                    state: state.to_string(),
                };
                ConstGauge::new(i64::from(snapshot.devices[i]))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "condition",
            "1 when the hierarchy's condition (Ready, Stalled) is True, else 0",
            None,
            MetricType::Gauge,
        )?;
        for (labels, snapshot) in &snapshots {
            for (i, condition) in EXPORTED_CONDITIONS.iter().enumerate() {
                let labels = ConditionLabels {
                    namespace: labels.namespace.clone(),
                    hierarchy: labels.hierarchy.clone(),
                    condition: condition.to_string(),
                };
                ConstGauge::new(i64::from(snapshot.conditions[i]))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn labels(namespace: &str, name: &str) -> HierarchyLabels {
    HierarchyLabels {
        namespace: namespace.to_string(),
        hierarchy: name.to_string(),
    }
}

impl Collector for Fleet {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        self.encode_at(encoder, Timestamp::now())
    }
}

#[cfg(test)]
mod tests;
