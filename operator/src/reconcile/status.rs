//! Builds the status from what a reconcile found. Pure: the controller only patches the result.
//!
//! Size (docs/status.md): every text is cut where it enters the status ([`cap_text`]), and
//! [`for_apply`] shortens lists and, when the object would outgrow its budget
//! ([`OBJECT_BUDGET`]), leaves the texts of all but the first devices out.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;

use super::conditions::{ConditionUpdate, Status, merge_conditions, truncate};
use super::devices::{DeviceReport, Plan};
use crate::api::{
    ConfigurationStatus, DeviceState, DeviceStatus, EdgeHierarchy, EdgeHierarchyStatus,
    ReconcilePolicy, StatusSummary, condition_type as ct,
};

pub mod budget;
#[cfg(test)]
mod size_tests;
pub mod worst_case;

pub use budget::{OBJECT_BUDGET, for_apply, status_room};

/// Longest device-level text in the status (a drift item, a module entry), in bytes.
pub const MAX_TEXT: usize = 160;
/// Longest device message (the last error), in bytes.
pub const MAX_MESSAGE: usize = 240;
/// Longest condition message, in bytes (the apiserver allows 32 KiB; seven of those would
/// take a fifth of the budget).
pub const MAX_CONDITION_MESSAGE: usize = 2048;

/// The server-side apply body of a status write (the field manager is `names::MANAGER`).
pub fn apply_patch(status: &EdgeHierarchyStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": EdgeHierarchy::api_version(&()),
        "kind": EdgeHierarchy::kind(&()),
        "status": status,
    })
}

/// A text as it enters the status: trimmed, cut to `max` bytes on a character boundary.
pub fn cap_text(text: &str, max: usize) -> String {
    truncate(text.trim(), max)
}

/// Condition reasons (PascalCase, as kstatus tooling shows them).
pub mod reason {
    pub const RECONCILED: &str = "Reconciled";
    pub const PROGRESSING: &str = "Progressing";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const BAD_CREDENTIALS: &str = "BadCredentials";
    pub const HUB_UNREACHABLE: &str = "HubUnreachable";
    pub const HUB_QUOTA_EXCEEDED: &str = "HubQuotaExceeded";
    pub const OWNERSHIP_CONFLICT: &str = "OwnershipConflict";
    pub const DRIFT_CORRECTED: &str = "DriftCorrected";
    pub const DRIFT_REPORTED: &str = "DriftReported";
    pub const NO_DRIFT: &str = "NoDrift";
    pub const DELETING: &str = "Deleting";
    pub const INVALID_ROOT_CA: &str = "InvalidRootCA";
    pub const CERTIFICATES_ISSUED: &str = "CertificatesIssued";
    pub const ROOT_ROTATING: &str = "RootRotating";
    pub const BUNDLES_INCOMPLETE: &str = "BundlesIncomplete";
    pub const HUB_REJECTED: &str = "HubRejected";
    pub const OWNERSHIP_KEY_INVALID: &str = "OwnershipKeyInvalid";
}

/// The outcome of the reconcile rounds, as status input.
pub struct SyncOutcome<'a> {
    pub policy: ReconcilePolicy,
    /// The last round's plan: final device states.
    pub last: &'a Plan,
    /// Drift found in any round, per device (a corrected drift is gone from the last round).
    pub drift: &'a BTreeMap<String, Vec<String>>,
    /// Device-level write failures of the last applied round.
    pub failures: &'a BTreeMap<String, String>,
    /// Spec device ids in parent-first order (status lists them in this order).
    pub order: &'a [String],
}

/// Status after a full sync with the hub.
pub fn synced_status(
    previous: &EdgeHierarchyStatus,
    outcome: &SyncOutcome<'_>,
    generation: Option<i64>,
    now: &Time,
) -> EdgeHierarchyStatus {
    let (devices, summary) = device_entries(previous, outcome);
    let updates = sync_conditions(outcome, &devices, &summary);
    EdgeHierarchyStatus {
        observed_generation: generation,
        conditions: merge(&previous.conditions, &updates, generation, now),
        summary: Some(summary),
        root_ca: previous.root_ca.clone(),
        next_renewal_time: previous.next_renewal_time.clone(),
        last_sync_time: Some(now.clone()),
        configurations: previous.configurations.clone(),
        devices,
        details_omitted: None,
    }
}

/// [`merge_conditions`] with every message cut to [`MAX_CONDITION_MESSAGE`].
fn merge(
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    updates: &[ConditionUpdate],
    generation: Option<i64>,
    now: &Time,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let capped: Vec<ConditionUpdate> = updates
        .iter()
        .map(|u| ConditionUpdate {
            message: cap_text(&u.message, MAX_CONDITION_MESSAGE),
            ..u.clone()
        })
        .collect();
    merge_conditions(previous, &capped, generation, now)
}

/// One entry per device, spec order first, with the counts of the summary.
fn device_entries(
    previous: &EdgeHierarchyStatus,
    outcome: &SyncOutcome<'_>,
) -> (Vec<DeviceStatus>, StatusSummary) {
    let mut devices = Vec::new();
    let mut summary = StatusSummary::default();
    let ids = outcome.order.iter().chain(
        outcome
            .last
            .devices
            .keys()
            .filter(|id| !outcome.order.contains(id)),
    );
    for id in ids {
        let Some(report) = outcome.last.devices.get(id) else {
            continue;
        };
        let mut status = device_status(id, report, previous);
        if let Some(drift) = outcome.drift.get(id) {
            status.drift = drift.iter().map(|d| cap_text(d, MAX_TEXT)).collect();
        }
        if let Some(failure) = outcome.failures.get(id) {
            status.state = DeviceState::Error;
            status.message = Some(cap_text(failure, MAX_MESSAGE));
        }
        if report.state != DeviceState::Deleting {
            summary.devices += 1;
            summary.registered += u32::from(report.registered);
            summary.parented += u32::from(report.parented && report.parent.is_some());
            summary.drifted += u32::from(!status.drift.is_empty());
        }
        devices.push(status);
    }
    (devices, summary)
}

/// Ready, Stalled, Reconciling and DriftDetected after a sync.
fn sync_conditions(
    outcome: &SyncOutcome<'_>,
    devices: &[DeviceStatus],
    summary: &StatusSummary,
) -> Vec<ConditionUpdate> {
    let manage = outcome.policy == ReconcilePolicy::Manage;
    let count = |state: DeviceState| devices.iter().filter(|d| d.state == state).count();
    let not_ready: Vec<String> = devices
        .iter()
        .filter(|d| d.state != DeviceState::Ready)
        .map(|d| format!("{} ({:?})", d.id, d.state))
        .collect();
    let converged = outcome.last.is_converged() && outcome.failures.is_empty();
    let drifted = summary.drifted;

    let mut updates = Vec::new();
    let conflicts = &outcome.last.conflicts;
    let conflicted = !conflicts.is_empty();
    if conflicted {
        // One conflict is one sentence; a thousand are five sentences and a count.
        let conflicts = if conflicts.len() <= 5 {
            conflicts.join("; ")
        } else {
            format!(
                "{} and {} more",
                conflicts[..5].join("; "),
                conflicts.len() - 5
            )
        };
        updates.push(ConditionUpdate::new(
            ct::READY,
            Status::False,
            reason::OWNERSHIP_CONFLICT,
            conflicts.clone(),
        ));
        updates.push(ConditionUpdate::new(
            ct::STALLED,
            Status::True,
            reason::OWNERSHIP_CONFLICT,
            conflicts,
        ));
    } else {
        updates.push(ConditionUpdate::new(
            ct::STALLED,
            Status::False,
            reason::RECONCILED,
            "",
        ));
        if not_ready.is_empty() {
            updates.push(ConditionUpdate::new(
                ct::READY,
                Status::True,
                reason::RECONCILED,
                format!("{} devices registered and linked", summary.devices),
            ));
        } else {
            let (reason, what) = if !manage && count(DeviceState::Drifted) > 0 {
                (
                    reason::DRIFT_REPORTED,
                    "differ from the spec (reconcile: Observe)",
                )
            } else {
                (reason::PROGRESSING, "not ready")
            };
            updates.push(ConditionUpdate::new(
                ct::READY,
                Status::False,
                reason,
                format!(
                    "{} of {} devices {what}: {}",
                    not_ready.len(),
                    devices.len(),
                    summarize(&not_ready)
                ),
            ));
        }
    }
    updates.push(ConditionUpdate::new(
        ct::RECONCILING,
        Status::from_bool(!converged && !conflicted),
        if converged {
            reason::RECONCILED
        } else {
            reason::PROGRESSING
        },
        if converged {
            String::new()
        } else {
            "changes to the hub are still in progress".into()
        },
    ));
    updates.push(if drifted == 0 {
        ConditionUpdate::new(ct::DRIFT_DETECTED, Status::False, reason::NO_DRIFT, "the hub matched the spec at the last sync")
    } else if manage {
        ConditionUpdate::new(ct::DRIFT_DETECTED, Status::True, reason::DRIFT_CORRECTED, format!("{drifted} devices differed from the spec and were corrected"))
    } else {
        ConditionUpdate::new(ct::DRIFT_DETECTED, Status::True, reason::DRIFT_REPORTED, format!("{drifted} devices differ from the spec; reconcile is Observe, so nothing was written"))
    });
    updates
}

/// Puts each device's certificate and bundle into the status, with `rootCA` and the
/// `CertificatesReady` condition.
pub fn add_certificates(
    status: &mut EdgeHierarchyStatus,
    certificates: &super::certs::Certificates,
    bundles: &super::bundles::Bundles,
    generation: Option<i64>,
    now: &Time,
) {
    let time = |t: jiff::Timestamp| Time(t);
    for device in &mut status.devices {
        if let Some(c) = certificates.devices.get(&device.id) {
            device.certificate = Some(crate::api::CertificateStatus {
                not_after: Some(time(c.not_after)),
                revision: c.revision,
                est: certificates.est_latest.get(&device.id).cloned(),
            });
        }
        if let Some(b) = bundles.status.get(&device.id) {
            device.bundle = Some(b.clone());
        }
        if let Some(failure) = bundles.failures.get(&device.id) {
            device.message = Some(cap_text(&format!("bundle: {failure}"), MAX_MESSAGE));
        }
    }
    let rotation = certificates
        .rotation
        .as_ref()
        .and_then(|r| rotation_status(&r.plan));
    status.root_ca = Some(crate::api::RootCaStatus {
        secret_name: certificates.root_secret.clone(),
        not_after: Some(time(certificates.root.info.not_after)),
        rotation: rotation.clone(),
    });
    status.next_renewal_time = certificates.next_renewal().map(time);
    let update = if let (Some(r), true) = (&rotation, bundles.failures.is_empty()) {
        ConditionUpdate::new(
            ct::CERTIFICATES_READY,
            Status::True,
            reason::ROOT_ROTATING,
            rotation_message(r),
        )
    } else if bundles.failures.is_empty() {
        let next = certificates
            .next_renewal()
            .map_or("no device certificates yet".to_string(), |t| {
                format!("next renewal at {t}")
            });
        ConditionUpdate::new(
            ct::CERTIFICATES_READY,
            Status::True,
            reason::CERTIFICATES_ISSUED,
            format!(
                "{} device certificates valid; {next}",
                certificates.devices.len()
            ),
        )
    } else {
        let failed: Vec<String> = bundles
            .failures
            .iter()
            .map(|(id, f)| format!("{id}: {f}"))
            .collect();
        ConditionUpdate::new(
            ct::CERTIFICATES_READY,
            Status::False,
            reason::BUNDLES_INCOMPLETE,
            summarize(&failed),
        )
    };
    status.conditions = merge(&status.conditions, &[update], generation, now);
}

/// The status of a rotation still under way; `None` once it completed.
fn rotation_status(
    plan: &super::certs::rotation::RotationPlan,
) -> Option<crate::api::RootRotationStatus> {
    use super::certs::rotation::RotationPhase as Plan;
    use crate::api::RootRotationPhase as Phase;
    let phase = match plan.phase {
        Plan::Trusting => Phase::Trusting,
        Plan::Reissuing => Phase::Reissuing,
        Plan::Retiring => Phase::Retiring,
        Plan::Complete => return None,
    };
    let c = plan.counts;
    Some(crate::api::RootRotationStatus {
        phase,
        layer: plan.layer,
        started_at: Time(plan.started),
        old_root_trusted_until: Time(plan.deadline),
        devices: c.devices,
        trusting_new_root: c.trusting_new_root,
        reissued: c.reissued,
        installed: c.installed,
    })
}

/// What a person reads in `CertificatesReady` while a rotation runs: where it is, what it
/// waits for, and how to end it early.
fn rotation_message(r: &crate::api::RootRotationStatus) -> String {
    use crate::api::RootRotationPhase as Phase;
    let waiting = match r.phase {
        Phase::Trusting => format!(
            "{} of {} devices installed a bundle trusting the new root",
            r.trusting_new_root, r.devices
        ),
        Phase::Reissuing => format!(
            "re-issuing layer {} ({} of {} edge CAs under the new root, {} installed)",
            r.layer.unwrap_or_default(),
            r.reissued,
            r.devices,
            r.installed
        ),
        Phase::Retiring => format!(
            "{} of {} devices installed their edge CA under the new root",
            r.installed, r.devices
        ),
    };
    format!(
        "root rotation {:?}: {waiting}; devices acknowledge a bundle with the {} annotation; the \
         old root stays trusted until {} (spec.certificates.rootRotation.overlap; 0s ends it now)",
        r.phase,
        crate::names::INSTALLED_ANNOTATION,
        r.old_root_trusted_until.0
    )
}

/// Puts module health and deployments into the status, with `DeploymentsReady`, `ModulesHealthy`
/// and configuration drift in `DriftDetected`.
pub fn add_deployments(
    status: &mut EdgeHierarchyStatus,
    deployed: &super::deployments::DeploymentOutcome,
    policy: ReconcilePolicy,
    generation: Option<i64>,
    now: &Time,
) {
    let (mut failing, mut pending) = (Vec::new(), Vec::new());
    let (mut healthy, mut applied) = (0, 0);
    let mut configurations = std::collections::BTreeSet::new();
    for device in &mut status.devices {
        if let Some(modules) = deployed.modules.get(&device.id) {
            // Device-reported texts enter the status here, each cut to MAX_TEXT.
            let cap = |items: &[String]| -> Vec<String> {
                items.iter().map(|t| cap_text(t, MAX_TEXT)).collect()
            };
            let modules = crate::api::ModulesStatus {
                failing: cap(&modules.failing),
                pending: cap(&modules.pending),
                ..modules.clone()
            };
            if crate::deploy::modules_healthy(&modules) {
                healthy += 1;
            } else if !modules.failing.is_empty() {
                failing.push(format!("{}: {}", device.id, modules.failing.join(", ")));
            } else if !modules.pending.is_empty() {
                pending.push(format!("{}: {}", device.id, modules.pending.join(", ")));
            } else {
                failing.push(format!(
                    "{}: {} of {} modules running",
                    device.id, modules.running, modules.desired
                ));
            }
            device.modules = Some(modules);
        }
        if let Some((name, configuration_id, is_applied)) = deployed.deployments.get(&device.id) {
            applied += u32::from(*is_applied);
            device.deployment = Some(crate::api::DeviceDeploymentStatus {
                name: name.clone(),
                applied: *is_applied,
            });
            if let Some(id) = configuration_id {
                configurations.insert(ConfigurationStatus {
                    deployment: name.clone(),
                    id: id.clone(),
                });
            }
        }
    }
    status.configurations = configurations.into_iter().collect();
    if let Some(summary) = status.summary.as_mut() {
        summary.healthy = healthy;
        summary.deployed = applied;
    }
    let mut updates = vec![
        if deployed.not_ready.is_empty() {
            ConditionUpdate::new(
                ct::DEPLOYMENTS_READY,
                Status::True,
                "Deployed",
                format!("{applied} devices report their deployment applied"),
            )
        } else {
            ConditionUpdate::new(
                ct::DEPLOYMENTS_READY,
                Status::False,
                "DeploymentsNotReady",
                summarize(&deployed.not_ready),
            )
        },
        // Failing modules need a person; pending ones (an agent that has not reported yet, a
        // deployment not processed yet) only time, so they are Unknown, not False.
        if !failing.is_empty() {
            ConditionUpdate::new(
                ct::MODULES_HEALTHY,
                Status::False,
                "ModulesFailing",
                summarize(&failing),
            )
        } else if !pending.is_empty() {
            ConditionUpdate::new(
                ct::MODULES_HEALTHY,
                Status::Unknown,
                "ModulesPending",
                summarize(&pending),
            )
        } else {
            ConditionUpdate::new(
                ct::MODULES_HEALTHY,
                Status::True,
                "ModulesRunning",
                format!("every module runs on {healthy} devices"),
            )
        },
    ];
    if !deployed.drift.is_empty() {
        let reason = if policy == ReconcilePolicy::Manage {
            reason::DRIFT_CORRECTED
        } else {
            reason::DRIFT_REPORTED
        };
        let mut message = status
            .conditions
            .iter()
            .find(|c| c.type_ == ct::DRIFT_DETECTED && c.status == "True")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        if !message.is_empty() {
            message.push_str("; ");
        }
        message.push_str(&deployed.drift.join("; "));
        updates.push(ConditionUpdate::new(
            ct::DRIFT_DETECTED,
            Status::True,
            reason,
            message,
        ));
    }
    status.conditions = merge(&status.conditions, &updates, generation, now);
}

/// Status when the reconcile could not get as far as the hub: an invalid spec, credentials, or
/// an unreachable hub. Device entries are kept from before so nothing already known is lost.
pub fn blocked_status(
    previous: &EdgeHierarchyStatus,
    reason: &str,
    message: &str,
    stalled: bool,
    generation: Option<i64>,
    now: &Time,
) -> EdgeHierarchyStatus {
    let updates = [
        ConditionUpdate::new(ct::READY, Status::False, reason, message),
        ConditionUpdate::new(
            ct::STALLED,
            Status::from_bool(stalled),
            reason,
            if stalled { message } else { "" },
        ),
        ConditionUpdate::new(
            ct::RECONCILING,
            Status::from_bool(!stalled),
            reason,
            if stalled { "" } else { message },
        ),
    ];
    EdgeHierarchyStatus {
        observed_generation: generation,
        conditions: merge(&previous.conditions, &updates, generation, now),
        ..previous.clone()
    }
}

/// Status written on the very first reconcile, so kstatus never reads "Current" by default.
pub fn initial_status(
    previous: &EdgeHierarchyStatus,
    generation: Option<i64>,
    now: &Time,
) -> EdgeHierarchyStatus {
    let updates = [
        ConditionUpdate::new(
            ct::READY,
            Status::Unknown,
            reason::PROGRESSING,
            "first reconcile in progress",
        ),
        ConditionUpdate::new(
            ct::RECONCILING,
            Status::True,
            reason::PROGRESSING,
            "first reconcile in progress",
        ),
    ];
    EdgeHierarchyStatus {
        conditions: merge(&previous.conditions, &updates, generation, now),
        ..previous.clone()
    }
}

fn device_status(id: &str, report: &DeviceReport, previous: &EdgeHierarchyStatus) -> DeviceStatus {
    let before = previous.devices.iter().find(|d| d.id == id);
    DeviceStatus {
        id: id.to_string(),
        layer: report.layer,
        state: report.state,
        device_scope: report.device_scope.clone(),
        // Kept from before: certificates, bundles, deployments and modules have their own steps.
        certificate: before.and_then(|d| d.certificate.clone()),
        bundle: before.and_then(|d| d.bundle.clone()),
        deployment: before.and_then(|d| d.deployment.clone()),
        modules: before.and_then(|d| d.modules.clone()),
        drift: report.drift.iter().map(|d| cap_text(d, MAX_TEXT)).collect(),
        message: report.message.as_deref().map(|m| cap_text(m, MAX_MESSAGE)),
    }
}

/// At most five names, then a count, so condition messages stay readable for big fleets.
fn summarize(items: &[String]) -> String {
    super::conditions::summarize(items, 5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::devices::Action;

    fn now(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn report(state: DeviceState, parent: Option<&str>) -> DeviceReport {
        DeviceReport {
            state,
            layer: Some(if parent.is_some() { 2 } else { 1 }),
            parent: parent.map(Into::into),
            device_scope: Some("scope".into()),
            registered: true,
            parented: true,
            ..Default::default()
        }
    }

    fn condition<'a>(
        s: &'a EdgeHierarchyStatus,
        t: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t} condition"))
    }

    fn outcome_status(
        plan: &Plan,
        drift: BTreeMap<String, Vec<String>>,
        policy: ReconcilePolicy,
    ) -> EdgeHierarchyStatus {
        let order = vec!["top".to_string(), "lower".to_string()];
        let failures = BTreeMap::new();
        let outcome = SyncOutcome {
            policy,
            last: plan,
            drift: &drift,
            failures: &failures,
            order: &order,
        };
        synced_status(&EdgeHierarchyStatus::default(), &outcome, Some(3), &now(10))
    }

    #[test]
    fn all_ready_is_ready_and_counts_are_right() {
        let mut plan = Plan::default();
        plan.devices
            .insert("top".into(), report(DeviceState::Ready, None));
        plan.devices
            .insert("lower".into(), report(DeviceState::Ready, Some("top")));
        let s = outcome_status(&plan, BTreeMap::new(), ReconcilePolicy::Manage);
        assert_eq!(condition(&s, "Ready").status, "True");
        assert_eq!(condition(&s, "Stalled").status, "False");
        assert_eq!(condition(&s, "Reconciling").status, "False");
        assert_eq!(condition(&s, "DriftDetected").status, "False");
        assert_eq!(
            s.summary,
            Some(StatusSummary {
                devices: 2,
                registered: 2,
                parented: 1,
                deployed: 0,
                healthy: 0,
                drifted: 0
            })
        );
        assert_eq!(
            s.devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["top", "lower"]
        );
        assert_eq!(s.observed_generation, Some(3));
        assert!(s.last_sync_time.is_some());
    }

    #[test]
    fn corrected_drift_is_reported_but_ready() {
        let mut plan = Plan::default();
        plan.devices
            .insert("top".into(), report(DeviceState::Ready, None));
        plan.devices
            .insert("lower".into(), report(DeviceState::Ready, Some("top")));
        let drift = BTreeMap::from([(
            "lower".to_string(),
            vec!["device is disabled in the hub; corrected".to_string()],
        )]);
        let s = outcome_status(&plan, drift, ReconcilePolicy::Manage);
        assert_eq!(condition(&s, "Ready").status, "True");
        let d = condition(&s, "DriftDetected");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", reason::DRIFT_CORRECTED)
        );
        assert_eq!(s.summary.unwrap().drifted, 1);
        assert_eq!(
            s.devices[1].drift,
            ["device is disabled in the hub; corrected"]
        );
    }

    #[test]
    fn observe_drift_is_not_ready() {
        let mut plan = Plan::default();
        plan.devices
            .insert("top".into(), report(DeviceState::Ready, None));
        let mut lower = report(DeviceState::Drifted, Some("top"));
        lower.drift = vec!["x; not corrected (reconcile: Observe)".into()];
        plan.devices.insert("lower".into(), lower);
        let s = outcome_status(
            &plan,
            BTreeMap::from([("lower".into(), vec!["x".into()])]),
            ReconcilePolicy::Observe,
        );
        let ready = condition(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::DRIFT_REPORTED)
        );
        assert!(ready.message.contains("lower"), "{}", ready.message);
        assert_eq!(
            condition(&s, "DriftDetected").reason,
            reason::DRIFT_REPORTED
        );
    }

    #[test]
    fn conflicts_stall() {
        let mut plan = Plan::default();
        plan.devices
            .insert("top".into(), report(DeviceState::Conflict, None));
        plan.conflicts.push("device \"top\" already exists".into());
        let s = outcome_status(&plan, BTreeMap::new(), ReconcilePolicy::Manage);
        let stalled = condition(&s, "Stalled");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", reason::OWNERSHIP_CONFLICT)
        );
        assert!(stalled.message.contains("top"));
        assert_eq!(condition(&s, "Ready").status, "False");
        assert_eq!(condition(&s, "Reconciling").status, "False");
    }

    #[test]
    fn pending_actions_keep_reconciling() {
        let mut plan = Plan::default();
        plan.devices
            .insert("top".into(), report(DeviceState::Pending, None));
        plan.actions.push(Action::Delete(vec![]));
        let s = outcome_status(&plan, BTreeMap::new(), ReconcilePolicy::Manage);
        assert_eq!(condition(&s, "Reconciling").status, "True");
        assert_eq!(condition(&s, "Ready").reason, reason::PROGRESSING);
    }

    #[test]
    fn blocked_status_keeps_devices_and_stalls_only_when_asked() {
        let mut previous = EdgeHierarchyStatus::default();
        previous.devices.push(DeviceStatus {
            id: "top".into(),
            ..Default::default()
        });
        let s = blocked_status(
            &previous,
            reason::INVALID_SPEC,
            "device \"x\": bad",
            true,
            Some(2),
            &now(5),
        );
        assert_eq!(s.devices.len(), 1);
        assert_eq!(condition(&s, "Stalled").status, "True");
        assert_eq!(condition(&s, "Ready").message, "device \"x\": bad");
        let s = blocked_status(
            &previous,
            reason::HUB_UNREACHABLE,
            "timeout",
            false,
            Some(2),
            &now(5),
        );
        assert_eq!(condition(&s, "Stalled").status, "False");
        assert_eq!(condition(&s, "Reconciling").status, "True");
    }

    #[test]
    fn first_status_is_ready_unknown() {
        let s = initial_status(&EdgeHierarchyStatus::default(), Some(1), &now(1));
        assert_eq!(condition(&s, "Ready").status, "Unknown");
        assert_eq!(condition(&s, "Reconciling").status, "True");
    }
}
