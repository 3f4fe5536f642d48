//! Root rotation (docs/certificates.md, "Root rotation"): when the root changes, the old root
//! stays in every trust bundle and the edge CAs move to the new root one layer at a time, so at
//! every moment each child trusts the chain its parent serves. Pure; the certificate step
//! observes what it needs and applies the plan.
//!
//! A device is known to run a bundle once its installer acknowledged it
//! ([`INSTALLED_ANNOTATION`] equal to the bundle's fingerprint); the bundle's own annotations
//! then say which roots it trusts and which edge CA it carries. The phases:
//! 1. `Trusting`: every edge CA stays under the old root; bundles trust both roots. Waits until
//!    every Edge device installed a bundle that trusts the new root.
//! 2. `Reissuing`: the top-most layer still under the old root is re-issued, once every Edge
//!    device above it installed its edge CA under the new root.
//! 3. `Retiring`: everything is issued under the new root; bundles still trust both until every
//!    Edge device installed its new edge CA.
//!
//! Then the old root is dropped. When `overlap` has passed since the rotation began, whatever
//! remains is re-issued at once and the old root is dropped (forced).

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use super::installed::running;

/// Where one device stands, as its Secrets say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationDevice {
    pub id: String,
    pub layer: u32,
    /// An Edge device: it runs a bundle and serves its children with its edge CA. (An X509 Leaf
    /// has an identity only; the hub checks its thumbprint, not its root.)
    pub edge: bool,
    /// Its certificate Secret was issued under an old root.
    pub on_old_root: bool,
    pub installed: Installed,
}

/// What the bundle a device acknowledged holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Installed {
    /// It trusts the current root.
    pub trusts_current_root: bool,
    /// It carries the device's current edge CA, issued under the current root.
    pub current_edge_ca: bool,
}

/// What the device acknowledged, from its bundle Secret: the current revision's content when
/// the acknowledged fingerprint is the current one, the one before's when it is that one
/// (the operator wrote a new revision since), else nothing. `edge_ca` is the thumbprint of the
/// device's edge CA when that is issued under the current root.
pub fn installed(bundle: Option<&Secret>, current_root: &str, edge_ca: Option<&str>) -> Installed {
    let Some(running) = bundle.and_then(running) else {
        return Installed::default();
    };
    let trusts_current_root = running.trusted_roots.contains(&current_root);
    let current_edge_ca = edge_ca.is_some() && running.edge_ca == edge_ca;
    Installed {
        trusts_current_root,
        current_edge_ca: trusts_current_root && current_edge_ca,
    }
}

/// The phase a rotation is in after this reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationPhase {
    Trusting,
    Reissuing,
    Retiring,
    /// Done in this reconcile: the old roots leave the trust bundles.
    Complete,
}

/// Progress counts, over the Edge devices (their bundles are what links depend on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RotationCounts {
    pub devices: u32,
    /// Installed a bundle that trusts the new root.
    pub trusting_new_root: u32,
    /// Certificates issued under the new root (after this reconcile's re-issues).
    pub reissued: u32,
    /// Installed their edge CA under the new root.
    pub installed: u32,
}

/// What the certificate step does about the rotation now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPlan {
    pub phase: RotationPhase,
    /// The layer being re-issued, or waited for (`Reissuing`).
    pub layer: Option<u32>,
    /// Devices whose certificates under the old root are kept as they are this reconcile.
    pub hold: BTreeSet<String>,
    /// Devices re-issued under the new root now.
    pub reissue: Vec<String>,
    /// The overlap passed before the devices caught up.
    pub forced: bool,
    pub started: Timestamp,
    /// When the old root is dropped at the latest.
    pub deadline: Timestamp,
    pub counts: RotationCounts,
}

/// Everything the rotation plan looks at; only called while some old root is still around.
pub struct RotationInput<'a> {
    pub devices: &'a [RotationDevice],
    /// When the rotation began (kept in the retired-root Secret); `None` when it begins now.
    pub started: Option<Timestamp>,
    pub overlap: Duration,
    pub now: Timestamp,
}

/// Plans the rotation. See the module docs.
pub fn plan_rotation(input: &RotationInput<'_>) -> RotationPlan {
    let started = input.started.unwrap_or(input.now);
    let deadline = add(started, input.overlap);
    let edge: Vec<&RotationDevice> = input.devices.iter().filter(|d| d.edge).collect();
    let old: Vec<&RotationDevice> = input.devices.iter().filter(|d| d.on_old_root).collect();
    let all_old = || old.iter().map(|d| d.id.clone());
    let mut plan = RotationPlan {
        phase: RotationPhase::Complete,
        layer: None,
        hold: BTreeSet::new(),
        reissue: Vec::new(),
        forced: false,
        started,
        deadline,
        counts: RotationCounts::default(),
    };
    let everyone_trusts = edge.iter().all(|d| d.installed.trusts_current_root);
    let everyone_installed = edge.iter().all(|d| d.installed.current_edge_ca);
    if input.now >= deadline {
        plan.forced = !(old.is_empty() && everyone_installed);
        plan.reissue = all_old().collect();
    } else if !everyone_trusts {
        plan.phase = RotationPhase::Trusting;
        plan.hold = all_old().collect();
    } else if let Some(layer) = old.iter().map(|d| d.layer).min() {
        plan.phase = RotationPhase::Reissuing;
        plan.layer = Some(layer);
        let above_installed = edge
            .iter()
            .filter(|d| d.layer < layer)
            .all(|d| d.installed.current_edge_ca);
        let (now, later): (Vec<&RotationDevice>, Vec<&RotationDevice>) = old
            .iter()
            .partition(|d| above_installed && d.layer == layer);
        plan.reissue = now.iter().map(|d| d.id.clone()).collect();
        plan.hold = later.iter().map(|d| d.id.clone()).collect();
    } else if !everyone_installed {
        plan.phase = RotationPhase::Retiring;
    }
    plan.counts = RotationCounts {
        devices: count(edge.iter().copied()),
        trusting_new_root: count(
            edge.iter()
                .copied()
                .filter(|d| d.installed.trusts_current_root),
        ),
        reissued: count(edge.iter().copied().filter(|d| !plan.hold.contains(&d.id))),
        installed: count(edge.iter().copied().filter(|d| d.installed.current_edge_ca)),
    };
    plan
}

fn count<'a>(devices: impl Iterator<Item = &'a RotationDevice>) -> u32 {
    u32::try_from(devices.count()).unwrap_or(u32::MAX)
}

/// `at + span`, saturating at the largest timestamp.
fn add(at: Timestamp, span: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(span)
        .ok()
        .and_then(|s| at.checked_add(s).ok())
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests;
