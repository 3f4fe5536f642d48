//! Fixtures: a three-layer tree (top; mid-a, mid-b under it; low under mid-a) and an X509 Leaf
//! under low, at each point of a rotation. Each test names the rule it covers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;

use super::*;
use crate::names::{
    EDGE_CA_ANNOTATION, FINGERPRINT_ANNOTATION, INSTALLED_ANNOTATION, PREVIOUS_EDGE_CA_ANNOTATION,
    PREVIOUS_FINGERPRINT_ANNOTATION, PREVIOUS_TRUSTED_ROOTS_ANNOTATION, TRUSTED_ROOTS_ANNOTATION,
};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn now() -> Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

/// Nothing installed yet.
const NONE: Installed = Installed {
    trusts_current_root: false,
    current_edge_ca: false,
};
/// A bundle trusting both roots, edge CA still under the old root.
const TRUSTS: Installed = Installed {
    trusts_current_root: true,
    current_edge_ca: false,
};
/// The edge CA under the new root.
const DONE: Installed = Installed {
    trusts_current_root: true,
    current_edge_ca: true,
};

fn device(id: &str, layer: u32, on_old_root: bool, installed: Installed) -> RotationDevice {
    RotationDevice {
        id: id.into(),
        layer,
        edge: true,
        on_old_root,
        installed,
    }
}

fn leaf(on_old_root: bool) -> RotationDevice {
    RotationDevice {
        id: "sensor".into(),
        layer: 4,
        edge: false,
        on_old_root,
        installed: NONE,
    }
}

/// The tree with each Edge device's (on old root, installed).
fn tree(states: [(bool, Installed); 4], leaf_old: bool) -> Vec<RotationDevice> {
    let [top, a, b, low] = states;
    vec![
        device("top", 1, top.0, top.1),
        device("mid-a", 2, a.0, a.1),
        device("mid-b", 2, b.0, b.1),
        device("low", 3, low.0, low.1),
        leaf(leaf_old),
    ]
}

fn plan(devices: &[RotationDevice], started: Option<Timestamp>) -> RotationPlan {
    plan_rotation(&RotationInput {
        devices,
        started,
        overlap: 30 * DAY,
        now: now(),
    })
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_new_rotation_keeps_every_certificate_until_every_bundle_trusts_the_new_root() {
    let devices = tree([(true, NONE); 4], true);
    let p = plan(&devices, None);
    assert_eq!(p.phase, RotationPhase::Trusting);
    assert!(p.reissue.is_empty());
    assert_eq!(p.hold, set(&["top", "mid-a", "mid-b", "low", "sensor"]));
    assert_eq!(p.started, now());
    assert_eq!(p.deadline, now().checked_add(30 * DAY).unwrap());
    assert!(!p.forced);
    assert_eq!(
        p.counts,
        RotationCounts {
            devices: 4,
            trusting_new_root: 0,
            reissued: 0,
            installed: 0
        }
    );
}

#[test]
fn one_device_that_has_not_installed_the_trust_holds_everyone() {
    let devices = tree(
        [(true, TRUSTS), (true, TRUSTS), (true, NONE), (true, TRUSTS)],
        true,
    );
    let p = plan(&devices, Some(now()));
    assert_eq!(p.phase, RotationPhase::Trusting);
    assert!(p.reissue.is_empty());
    assert_eq!(p.counts.trusting_new_root, 3);
}

#[test]
fn once_everyone_trusts_the_top_layer_is_reissued_first() {
    let devices = tree([(true, TRUSTS); 4], true);
    let p = plan(&devices, Some(now()));
    assert_eq!(p.phase, RotationPhase::Reissuing);
    assert_eq!(p.layer, Some(1));
    assert_eq!(p.reissue, ids(&["top"]));
    assert_eq!(p.hold, set(&["mid-a", "mid-b", "low", "sensor"]));
    assert_eq!(p.counts.reissued, 1);
}

#[test]
fn the_next_layer_waits_until_the_layer_above_installed_its_new_edge_ca() {
    // top re-issued, not installed yet.
    let devices = tree(
        [
            (false, TRUSTS),
            (true, TRUSTS),
            (true, TRUSTS),
            (true, TRUSTS),
        ],
        true,
    );
    let p = plan(&devices, Some(now()));
    assert_eq!(p.phase, RotationPhase::Reissuing);
    assert_eq!(p.layer, Some(2));
    assert!(p.reissue.is_empty(), "{:?}", p.reissue);
    assert_eq!(p.hold, set(&["mid-a", "mid-b", "low", "sensor"]));

    // top installed: the whole second layer goes, the third waits.
    let devices = tree(
        [
            (false, DONE),
            (true, TRUSTS),
            (true, TRUSTS),
            (true, TRUSTS),
        ],
        true,
    );
    let p = plan(&devices, Some(now()));
    assert_eq!(p.reissue, ids(&["mid-a", "mid-b"]));
    assert_eq!(p.hold, set(&["low", "sensor"]));
    assert_eq!(p.counts.reissued, 3);
    assert_eq!(p.counts.installed, 1);
}

#[test]
fn every_device_above_must_have_installed_not_only_the_parent() {
    // mid-b (not low's parent) has not installed yet: low still waits, layer by layer.
    let devices = tree(
        [
            (false, DONE),
            (false, DONE),
            (false, TRUSTS),
            (true, TRUSTS),
        ],
        true,
    );
    let p = plan(&devices, Some(now()));
    assert_eq!(p.layer, Some(3));
    assert!(p.reissue.is_empty());
    let devices = tree(
        [(false, DONE), (false, DONE), (false, DONE), (true, TRUSTS)],
        true,
    );
    let p = plan(&devices, Some(now()));
    assert_eq!(p.reissue, ids(&["low"]));
    assert_eq!(p.hold, set(&["sensor"]));
}

#[test]
fn a_leaf_is_reissued_with_its_layer_and_needs_no_installation() {
    let devices = tree([(false, DONE); 4], true);
    let p = plan(&devices, Some(now()));
    assert_eq!(p.phase, RotationPhase::Reissuing);
    assert_eq!(p.layer, Some(4));
    assert_eq!(p.reissue, ids(&["sensor"]));
    assert!(p.hold.is_empty());
}

#[test]
fn retiring_keeps_the_old_root_until_every_new_edge_ca_is_installed() {
    let devices = tree(
        [(false, DONE), (false, DONE), (false, DONE), (false, TRUSTS)],
        false,
    );
    let p = plan(&devices, Some(now()));
    assert_eq!(p.phase, RotationPhase::Retiring);
    assert!(p.reissue.is_empty() && p.hold.is_empty());
    assert_eq!(p.counts.installed, 3);
    assert_eq!(p.counts.reissued, 4);
}

#[test]
fn complete_once_every_device_installed_its_new_edge_ca() {
    let devices = tree([(false, DONE); 4], false);
    let p = plan(&devices, Some(now()));
    assert_eq!(p.phase, RotationPhase::Complete);
    assert!(!p.forced);
    assert!(p.reissue.is_empty() && p.hold.is_empty());
}

#[test]
fn when_the_overlap_passes_everything_left_is_reissued_and_the_rotation_forced() {
    let started = now().checked_sub(30 * DAY).unwrap();
    let devices = tree(
        [(false, DONE), (true, TRUSTS), (true, NONE), (true, NONE)],
        true,
    );
    let p = plan(&devices, Some(started));
    assert_eq!(p.phase, RotationPhase::Complete);
    assert!(p.forced);
    assert_eq!(p.reissue, ids(&["mid-a", "mid-b", "low", "sensor"]));
    assert!(p.hold.is_empty());
    // One second earlier it is still waiting.
    let started = now().checked_sub(30 * DAY).unwrap() + jiff::SignedDuration::from_secs(1);
    assert_eq!(plan(&devices, Some(started)).phase, RotationPhase::Trusting);
}

#[test]
fn a_zero_overlap_completes_at_once() {
    let devices = tree([(true, NONE); 4], true);
    let p = plan_rotation(&RotationInput {
        devices: &devices,
        started: None,
        overlap: Duration::ZERO,
        now: now(),
    });
    assert_eq!(p.phase, RotationPhase::Complete);
    assert!(p.forced);
    assert_eq!(p.reissue.len(), 5);
}

#[test]
fn a_device_added_during_the_rotation_starts_on_the_new_root_and_must_install_too() {
    let mut devices = tree([(false, DONE); 4], false);
    devices.push(device("new", 2, false, NONE));
    let p = plan(&devices, Some(now()));
    // It has installed nothing yet: the old root stays, and nothing is held or re-issued.
    assert_eq!(p.phase, RotationPhase::Trusting);
    assert!(p.hold.is_empty() && p.reissue.is_empty());
    devices.last_mut().unwrap().installed = TRUSTS;
    assert_eq!(plan(&devices, Some(now())).phase, RotationPhase::Retiring);
    devices.last_mut().unwrap().installed = DONE;
    assert_eq!(plan(&devices, Some(now())).phase, RotationPhase::Complete);
}

#[test]
fn without_edge_devices_only_the_leaves_are_reissued() {
    let devices = vec![leaf(true)];
    let p = plan(&devices, Some(now()));
    assert_eq!(p.reissue, ids(&["sensor"]));
    assert_eq!(p.counts.devices, 0);
}

fn bundle(annotations: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    }
}

#[test]
fn installed_needs_the_acknowledged_fingerprint_to_be_the_bundles_current_one() {
    let full = [
        (FINGERPRINT_ANNOTATION, "f2"),
        (TRUSTED_ROOTS_ANNOTATION, "new,old"),
        (EDGE_CA_ANNOTATION, "ca2"),
    ];
    assert_eq!(installed(None, "new", Some("ca2")), NONE);
    assert_eq!(
        installed(Some(&bundle(&full)), "new", Some("ca2")),
        NONE,
        "no acknowledgement"
    );
    let mut acked = full.to_vec();
    acked.push((INSTALLED_ANNOTATION, "f1"));
    assert_eq!(
        installed(Some(&bundle(&acked)), "new", Some("ca2")),
        NONE,
        "an older bundle"
    );
    acked.pop();
    acked.push((INSTALLED_ANNOTATION, " f2\n"));
    assert_eq!(installed(Some(&bundle(&acked)), "new", Some("ca2")), DONE);
    // The bundle's edge CA is not the device's current one (re-issued since).
    assert_eq!(installed(Some(&bundle(&acked)), "new", Some("ca3")), TRUSTS);
    // The device's edge CA is still under the old root.
    assert_eq!(installed(Some(&bundle(&acked)), "new", None), TRUSTS);
    // A bundle from before the rotation trusts only the old root.
    assert_eq!(installed(Some(&bundle(&acked)), "newer", Some("ca2")), NONE);
    // The operator wrote a new revision since: the acknowledged one is remembered.
    let rewritten = [
        (FINGERPRINT_ANNOTATION, "f3"),
        (TRUSTED_ROOTS_ANNOTATION, "new,old"),
        (EDGE_CA_ANNOTATION, "ca3"),
        (PREVIOUS_FINGERPRINT_ANNOTATION, "f2"),
        (PREVIOUS_TRUSTED_ROOTS_ANNOTATION, "new,old"),
        (PREVIOUS_EDGE_CA_ANNOTATION, "ca2"),
        (INSTALLED_ANNOTATION, "f2"),
    ];
    assert_eq!(
        installed(Some(&bundle(&rewritten)), "new", Some("ca3")),
        TRUSTS
    );
    let mut older = rewritten.to_vec();
    older.pop();
    older.push((INSTALLED_ANNOTATION, "f1"));
    assert_eq!(
        installed(Some(&bundle(&older)), "new", Some("ca3")),
        NONE,
        "two revisions back"
    );
    // Without the trust annotation (a bundle written by an older operator) nothing is known.
    let bare = [(FINGERPRINT_ANNOTATION, "f2"), (INSTALLED_ANNOTATION, "f2")];
    assert_eq!(installed(Some(&bundle(&bare)), "new", Some("ca2")), NONE);
}
