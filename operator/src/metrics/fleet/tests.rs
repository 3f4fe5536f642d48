use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use prometheus_client::registry::Registry;

use super::*;
use crate::api::{CertificateStatus, DeviceStatus, ModulesStatus, RootCaStatus};

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn condition(type_: &str, status: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: "Test".into(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(at("2026-01-01T00:00:00Z")),
    }
}

fn device(id: &str, state: DeviceState) -> DeviceStatus {
    DeviceStatus {
        id: id.into(),
        state,
        ..Default::default()
    }
}

fn certificate(not_after: &str) -> Option<CertificateStatus> {
    Some(CertificateStatus {
        not_after: Some(Time(at(not_after))),
        revision: 1,
        est: None,
    })
}

/// Two devices with certificates, one drifted with a failing module, a Conflict, a root CA.
fn status() -> EdgeHierarchyStatus {
    let mut top = device("top", DeviceState::Ready);
    top.certificate = certificate("2026-03-01T00:00:00Z");
    let mut mid = device("mid", DeviceState::Drifted);
    mid.certificate = certificate("2026-02-15T00:00:00Z");
    mid.drift = vec!["parent".into(), "status".into()];
    mid.modules = Some(ModulesStatus {
        desired: 3,
        running: 2,
        failing: vec!["opcua: backoff".into()],
        pending: Vec::new(),
    });
    EdgeHierarchyStatus {
        conditions: vec![condition("Ready", "False"), condition("Stalled", "True")],
        root_ca: Some(RootCaStatus {
            secret_name: "root".into(),
            not_after: Some(Time(at("2027-01-01T00:00:00Z"))),
            rotation: None,
        }),
        // The earliest of the devices' renewal times (mid's, 2026-02-15 less renewBefore).
        next_renewal_time: Some(Time(at("2026-01-20T00:00:00Z"))),
        devices: vec![top, mid, device("leaf", DeviceState::Conflict)],
        ..Default::default()
    }
}

#[test]
fn a_status_reduces_to_its_earliest_dates_and_counts() {
    let s = HierarchySnapshot::of(&status());
    assert_eq!(s.earliest_expiry, Some(at("2026-02-15T00:00:00Z")));
    assert_eq!(s.earliest_renewal, Some(at("2026-01-20T00:00:00Z")));
    assert_eq!(s.devices, [0, 1, 1, 1, 0, 0]);
    assert_eq!(s.drift_items, 2);
    assert_eq!(s.modules_failing, 1);
    assert_eq!(s.conditions, [false, true]);
}

#[test]
fn an_empty_status_has_no_dates_and_zero_counts() {
    let s = HierarchySnapshot::of(&EdgeHierarchyStatus::default());
    assert_eq!(s, HierarchySnapshot::default());
    assert_eq!(s.expiry_seconds(at("2026-01-01T00:00:00Z")), None);
    assert_eq!(s.renewal_overdue_seconds(at("2026-01-01T00:00:00Z")), 0.0);
}

#[test]
fn the_root_ca_counts_toward_expiry_when_it_ends_first() {
    let mut status = status();
    status.root_ca.as_mut().unwrap().not_after = Some(Time(at("2026-02-01T00:00:00Z")));
    let s = HierarchySnapshot::of(&status);
    assert_eq!(s.earliest_expiry, Some(at("2026-02-01T00:00:00Z")));
    // The root has no renewal time: the operator never re-issues a root on its own.
    assert_eq!(s.earliest_renewal, Some(at("2026-01-20T00:00:00Z")));
}

#[test]
fn seconds_are_measured_from_now() {
    let s = HierarchySnapshot::of(&status());
    assert_eq!(s.expiry_seconds(at("2026-02-14T00:00:00Z")), Some(86_400.0));
    assert_eq!(s.expiry_seconds(at("2026-02-15T00:01:00Z")), Some(-60.0));
    assert_eq!(s.renewal_overdue_seconds(at("2026-01-19T00:00:00Z")), 0.0);
    assert_eq!(
        s.renewal_overdue_seconds(at("2026-01-20T01:00:00Z")),
        3_600.0
    );
}

/// The fleet encoded at a fixed time, as a scrape at that time would see it.
#[derive(Debug)]
struct FleetAt(Arc<Fleet>, Timestamp);

impl Collector for FleetAt {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        self.0.encode_at(encoder, self.1)
    }
}

fn scrape(fleet: &Arc<Fleet>, now: &str) -> String {
    let mut registry = Registry::with_prefix("edge_hierarchy");
    registry.register_collector(Box::new(FleetAt(fleet.clone(), at(now))));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

#[test]
fn every_gauge_is_exported_with_namespace_and_hierarchy() {
    let fleet = Arc::new(Fleet::default());
    fleet.observe("iot", "plant", &status());
    let text = scrape(&fleet, "2026-02-14T00:00:00Z");
    let labels = r#"namespace="iot",hierarchy="plant""#;
    for line in [
        format!("edge_hierarchy_certificate_expiry_seconds{{{labels}}} 86400.0"),
        format!("edge_hierarchy_certificate_expiry_timestamp_seconds{{{labels}}} 1771113600.0"),
        format!("edge_hierarchy_certificate_renewal_overdue_seconds{{{labels}}} 2160000.0"),
        format!("edge_hierarchy_drift_items{{{labels}}} 2.0"),
        format!("edge_hierarchy_modules_failing{{{labels}}} 1.0"),
        format!(r#"edge_hierarchy_devices{{{labels},state="Ready"}} 1"#),
        format!(r#"edge_hierarchy_devices{{{labels},state="Conflict"}} 1"#),
        format!(r#"edge_hierarchy_devices{{{labels},state="Error"}} 0"#),
        format!(r#"edge_hierarchy_condition{{{labels},condition="Ready"}} 0"#),
        format!(r#"edge_hierarchy_condition{{{labels},condition="Stalled"}} 1"#),
        "# TYPE edge_hierarchy_devices gauge".to_string(),
    ] {
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
}

#[test]
fn a_forgotten_hierarchy_leaves_no_series() {
    let fleet = Arc::new(Fleet::default());
    fleet.observe("iot", "plant", &status());
    fleet.observe("iot", "line-2", &EdgeHierarchyStatus::default());
    fleet.forget("iot", "plant");
    let text = scrape(&fleet, "2026-02-14T00:00:00Z");
    assert!(!text.contains(r#"hierarchy="plant""#), "{text}");
    // No certificates yet: no expiry series, but the counts are there.
    assert!(
        !text.contains(
            r#"edge_hierarchy_certificate_expiry_seconds{namespace="iot",hierarchy="line-2"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"edge_hierarchy_devices{namespace="iot",hierarchy="line-2",state="Pending"} 0"#
        ),
        "{text}"
    );
}

#[test]
fn a_newer_status_replaces_the_snapshot() {
    let fleet = Arc::new(Fleet::default());
    fleet.observe("iot", "plant", &status());
    let mut healed = status();
    healed.devices[1].state = DeviceState::Ready;
    healed.conditions = vec![condition("Ready", "True"), condition("Stalled", "False")];
    fleet.observe("iot", "plant", &healed);
    let text = scrape(&fleet, "2026-02-14T00:00:00Z");
    assert!(
        text.contains(
            r#"edge_hierarchy_devices{namespace="iot",hierarchy="plant",state="Ready"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"edge_hierarchy_condition{namespace="iot",hierarchy="plant",condition="Stalled"} 0"#
        ),
        "{text}"
    );
}

#[test]
fn a_shortened_list_counts_the_items_its_last_entry_stands_for() {
    let mut status = status();
    status.devices[1].drift = vec!["parent".into(), "and 4 more".into()];
    status.devices[1].modules.as_mut().unwrap().failing =
        vec!["a".into(), "b".into(), "c".into(), "and 9 more".into()];
    let s = HierarchySnapshot::of(&status);
    assert_eq!(s.drift_items, 5);
    assert_eq!(s.modules_failing, 12);
}
