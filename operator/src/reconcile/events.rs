//! Kubernetes Events about hierarchies: what each step's outcome says, as pure functions that
//! return [`Note`]s, and one publisher that sends them.
//!
//! kube's `Recorder` folds every event with the same type, reason and action on one object into
//! one series for six minutes and keeps the first note: a second device's drift would read as
//! the first one's. Each distinct note therefore gets a recorder of its own, so a repeat of the
//! same note still becomes a series (a count, not a flood) while a new note is a new Event.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use tracing::warn;

use super::bundles::Bundles;
use super::certs::Certificates;
use super::conditions::{summarize, truncate};
use super::deployments::DeploymentOutcome;
use super::devices::Rounds;
use super::status::reason;
use crate::api::{EdgeHierarchy, ReconcilePolicy};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// How long a note's recorder is kept: kube's own series window.
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

pub struct EventPublisher {
    client: Client,
    reporter: Reporter,
    recorders: Mutex<HashMap<[u8; 32], (Recorder, Instant)>>,
}

impl EventPublisher {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            recorders: Mutex::new(HashMap::new()),
        }
    }

    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let key: [u8; 32] = Sha256::new()
            .chain_update(regarding.uid.as_deref().unwrap_or_default())
            .chain_update([0])
            .chain_update(reason)
            .chain_update([0])
            .chain_update(&note)
            .finalize()
            .into();
        let recorder = {
            let mut recorders = self.recorders.lock().await;
            let now = Instant::now();
            recorders.retain(|_, (_, used)| now.duration_since(*used) < SERIES_WINDOW);
            let entry = recorders.entry(key).or_insert_with(|| {
                (
                    Recorder::new(self.client.clone(), self.reporter.clone()),
                    now,
                )
            });
            entry.1 = now;
            entry.0.clone()
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        recorder.publish(&event, regarding).await
    }

    /// Publishes each note about `hierarchy`; a note that cannot be sent is logged, not fatal.
    pub async fn publish_all(&self, hierarchy: &EdgeHierarchy, notes: Vec<Note>) {
        let regarding = hierarchy.object_ref(&());
        for n in notes {
            let text = truncate(&n.note, 1000);
            if let Err(e) = self
                .publish(&regarding, n.type_, &n.reason, n.action, text)
                .await
            {
                warn!(error = %e, "could not publish event");
            }
        }
    }
}

/// One Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub type_: EventType,
    pub reason: String,
    pub action: &'static str,
    pub note: String,
}

impl Note {
    pub fn normal(reason: &str, action: &'static str, note: impl Into<String>) -> Self {
        Self::new(EventType::Normal, reason, action, note)
    }

    pub fn warning(reason: &str, action: &'static str, note: impl Into<String>) -> Self {
        Self::new(EventType::Warning, reason, action, note)
    }

    fn new(type_: EventType, reason: &str, action: &'static str, note: impl Into<String>) -> Self {
        Self {
            type_,
            reason: reason.to_string(),
            action,
            note: note.into(),
        }
    }
}

/// A Normal note saying what was done to which objects (`<done> <n> <what>: <ids>`), when
/// anything was.
pub fn announce(
    reason: &str,
    action: &'static str,
    done: &str,
    what: &str,
    ids: &[String],
) -> Option<Note> {
    (!ids.is_empty()).then(|| {
        Note::normal(
            reason,
            action,
            format!("{done} {} {what}: {}", ids.len(), summarize(ids, 10)),
        )
    })
}

/// Drift is news under Manage (it was corrected) and a warning under Observe (it stays).
fn drift_note(policy: ReconcilePolicy, action: &'static str, note: String) -> Note {
    match policy {
        ReconcilePolicy::Manage => Note::normal("DriftCorrected", action, note),
        ReconcilePolicy::Observe => Note::warning("DriftDetected", action, note),
    }
}

/// What the device rounds did: creates, drift, updates, deletes, conflicts, failed writes.
pub fn device_notes(rounds: &Rounds, policy: ReconcilePolicy) -> Vec<Note> {
    let applied = &rounds.applied;
    let mut notes: Vec<Note> = announce(
        "Created",
        "CreateDevices",
        "created",
        "devices in the hub",
        &applied.created,
    )
    .into_iter()
    .collect();
    for (id, items) in &rounds.drift {
        notes.push(drift_note(
            policy,
            "Sync",
            format!("device {id:?}: {}", items.join("; ")),
        ));
    }
    let linked: Vec<String> = applied
        .fixed
        .iter()
        .chain(&applied.tagged)
        .cloned()
        .collect();
    notes.extend(announce(
        "Updated",
        "UpdateDevices",
        "updated",
        "devices in the hub",
        &linked,
    ));
    notes.extend(announce(
        "Deleted",
        "DeleteDevices",
        "deleted",
        "devices from the hub",
        &applied.deleted,
    ));
    for conflict in &rounds.last.conflicts {
        notes.push(Note::warning(
            reason::OWNERSHIP_CONFLICT,
            "Sync",
            conflict.clone(),
        ));
    }
    notes.extend(failure_notes(
        "DeviceWriteFailed",
        "Sync",
        &applied.failures,
    ));
    notes
}

/// A Warning per device whose part of a step failed, naming the device.
fn failure_notes<'a>(
    reason: &'a str,
    action: &'static str,
    failures: &'a BTreeMap<String, String>,
) -> impl Iterator<Item = Note> + 'a {
    failures.iter().map(move |(id, failure)| {
        Note::warning(reason, action, format!("device {id:?}: {failure}"))
    })
}

/// A root rotation's step in this reconcile: begun, a layer re-issued, completed or forced.
fn rotation_note(rotation: &super::certs::RootRotation) -> Option<Note> {
    use super::certs::rotation::RotationPhase;
    let plan = &rotation.plan;
    let c = plan.counts;
    if plan.phase == RotationPhase::Complete {
        return Some(if plan.forced {
            Note::warning(
                "RootRotationForced",
                "RotateRoot",
                format!(
                    "root rotation ended by its overlap (until {}): the old root leaves the trust \
                     bundles although {} of {} devices had not acknowledged their edge CA under \
                     the new root; their links fail until they install their new bundles",
                    plan.deadline,
                    c.devices - c.installed.min(c.devices),
                    c.devices
                ),
            )
        } else {
            Note::normal(
                "RootRotationCompleted",
                "RotateRoot",
                format!(
                    "root rotation complete: all {} devices run edge CAs under the new root; the \
                     old root leaves the trust bundles",
                    c.devices
                ),
            )
        });
    }
    if rotation.began_now {
        return Some(Note::normal(
            "RootRotationStarted",
            "RotateRoot",
            format!(
                "new root CA: bundles trust both roots; edge CAs move to the new root layer by \
                 layer as devices acknowledge their bundles; the old root stays trusted until {}",
                plan.deadline
            ),
        ));
    }
    (!plan.reissue.is_empty()).then(|| {
        Note::normal(
            "RootRotationLayerReissued",
            "RotateRoot",
            format!(
                "root rotation: layer {} re-issued under the new root ({} certificates)",
                plan.layer.unwrap_or_default(),
                plan.reissue.len()
            ),
        )
    })
}

/// Certificates issued and renewed, bundles written and failed.
pub fn certificate_notes(certificates: &Certificates, bundles: &Bundles) -> Vec<Note> {
    let mut notes: Vec<Note> = announce(
        "CertificatesIssued",
        "IssueCertificates",
        "issued certificates for",
        "devices",
        &certificates.issued,
    )
    .into_iter()
    .collect();
    for id in &certificates.renewed {
        let revision = certificates.devices.get(id).map_or(0, |d| d.revision);
        notes.push(Note::normal(
            "CertificateRenewed",
            "RenewCertificates",
            format!("device {id:?}: certificates re-issued (revision {revision})"),
        ));
    }
    notes.extend(certificates.rotation.as_ref().and_then(rotation_note));
    notes.extend(announce(
        "BundlesUpdated",
        "WriteBundles",
        "wrote config bundles of",
        "devices",
        &bundles.updated,
    ));
    for id in &bundles.key_changed {
        let revision = bundles.status.get(id).map_or(0, |b| b.revision);
        notes.push(Note::warning(
            "SasKeyChanged",
            "WriteBundles",
            format!(
                "device {id:?}: its SAS key was changed in IoT Hub outside the operator; the bundle now carries the new key (revision {revision}): install it on the device"
            ),
        ));
    }
    notes.extend(failure_notes(
        "BundleFailed",
        "WriteBundles",
        &bundles.failures,
    ));
    notes
}

/// Configurations created and deleted, manifests applied, deployment drift.
pub fn deployment_notes(deployed: &DeploymentOutcome, policy: ReconcilePolicy) -> Vec<Note> {
    let mut notes: Vec<Note> = [
        (
            "DeploymentCreated",
            "created",
            "configurations",
            &deployed.created,
        ),
        (
            "DeploymentDeleted",
            "deleted",
            "configurations",
            &deployed.deleted,
        ),
        (
            "DeploymentApplied",
            "applied deployment manifests to",
            "devices",
            &deployed.applied,
        ),
    ]
    .into_iter()
    .filter_map(|(reason, done, what, ids)| announce(reason, "Deploy", done, what, ids))
    .collect();
    for drift in &deployed.drift {
        notes.push(drift_note(policy, "Deploy", drift.clone()));
    }
    notes
}
