use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::{
    BundleStatus, CertificateStatus, ConfigurationStatus, DeviceDeploymentStatus, DeviceState,
    EdgeHierarchyStatus, ModulesStatus,
};

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// examples/tutorial.yaml in namespace iot, with a reported lower-layer.
fn tutorial() -> EdgeHierarchy {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/tutorial.yaml"
    ))
    .unwrap();
    let mut h: EdgeHierarchy = serde_yaml::from_str(&yaml).unwrap();
    h.metadata.namespace = Some("iot".into());
    h.status = Some(EdgeHierarchyStatus {
        devices: vec![DeviceStatus {
            id: "lower-layer".into(),
            layer: Some(2),
            state: DeviceState::Drifted,
            device_scope: Some("ms-azure-iot-edge://lower-layer-2".into()),
            certificate: Some(CertificateStatus {
                not_after: Some(Time(at("2027-03-01T00:00:00Z"))),
                revision: 3,
                est: None,
            }),
            bundle: Some(BundleStatus { revision: 2 }),
            deployment: Some(DeviceDeploymentStatus {
                name: "lower-layer".into(),
                applied: true,
            }),
            modules: Some(ModulesStatus {
                desired: 4,
                running: 3,
                failing: vec!["SimulatedTemperatureSensor: backoff".into()],
                pending: Vec::new(),
            }),
            drift: vec!["device is disabled in the hub; enabled again".into()],
            message: None,
        }],
        configurations: vec![
            ConfigurationStatus {
                deployment: "lower-layer".into(),
                id: "tutorial-lower-layer-0a1b2c3d".into(),
            },
            ConfigurationStatus {
                deployment: "top-layer".into(),
                id: "tutorial-top-layer-4e5f6a7b".into(),
            },
        ],
        ..Default::default()
    });
    h
}

fn event(time: &str, reason: &str, note: &str) -> EventLine {
    EventLine {
        time: at(time),
        type_: "Normal".into(),
        reason: reason.into(),
        note: note.into(),
    }
}

#[test]
fn the_report_shows_certificate_modules_drift_and_the_events_naming_the_device() {
    let events = [
        event(
            "2026-12-01T10:05:00Z",
            "Renewed",
            "re-issued certificates of lower-layer (revision 3)",
        ),
        event(
            "2026-12-01T10:00:00Z",
            "Created",
            "created devices top-layer, lower-layer",
        ),
        event(
            "2026-12-01T10:01:00Z",
            "Created",
            "created devices top-layer",
        ),
    ];
    let text = render(
        &tutorial(),
        "lower-layer",
        &events,
        at("2026-12-01T12:00:00Z"),
    )
    .unwrap();
    // The Secret names follow the naming rule; the renewal is renewBefore (720h) before expiry.
    let certs = format!(
        "Secret {}, revision 3",
        crate::names::certificate_secret_name("tutorial", "lower-layer")
    );
    let bundle = format!(
        "Secret {}, revision 2",
        crate::names::bundle_secret_name("tutorial", "lower-layer")
    );
    for part in [
        "Device lower-layer (Edge) of iot/tutorial",
        "State:        Drifted",
        "Layer:        2 (parent top-layer)",
        &certs,
        &bundle,
        "expires 2027-03-01T00:00:00Z (in 89d 12h)",
        "renews  2027-01-30T00:00:00Z (in 59d 12h)",
        "Deployment:   lower-layer (configuration tutorial-lower-layer-0a1b2c3d), applied",
        "Modules:      3 of 4 running",
        "! SimulatedTemperatureSensor: backoff",
        "! device is disabled in the hub; enabled again",
    ] {
        assert!(text.contains(part), "{part:?} missing from\n{text}");
    }
    let event_lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Events"))
        .skip(1)
        .collect();
    assert_eq!(event_lines.len(), 2, "{text}");
    assert!(event_lines[0].contains("created devices top-layer, lower-layer"));
    assert!(
        event_lines[1].contains("revision 3"),
        "newest last:\n{text}"
    );
}

#[test]
fn a_device_not_in_the_spec_is_an_error_naming_the_way_to_list_them() {
    let err = render(&tutorial(), "nope", &[], at("2026-12-01T12:00:00Z")).unwrap_err();
    assert_eq!(
        err,
        "edgehierarchy \"tutorial\" in namespace \"iot\" has no device \"nope\"; \
         list its devices with `kubectl edgehierarchy tree tutorial -n iot`"
    );
}

#[test]
fn a_device_in_the_spec_without_status_says_so() {
    let text = render(&tutorial(), "top-layer", &[], at("2026-12-01T12:00:00Z")).unwrap();
    assert!(text.contains("not reported yet"), "{text}");
    assert!(
        text.contains("Events:         none naming this device"),
        "{text}"
    );
}

#[test]
fn an_expired_certificate_reads_as_ago() {
    let text = render(&tutorial(), "lower-layer", &[], at("2027-03-01T02:30:00Z")).unwrap();
    assert!(text.contains("(2h 30m ago)"), "{text}");
}

#[test]
fn only_whole_ids_count_as_mentions() {
    assert!(mentions("created devices top, mid", "top"));
    assert!(mentions("renewed \"top\".", "top"));
    assert!(mentions("top: parent re-linked", "top"));
    assert!(!mentions("created devices top-2", "top"));
    assert!(!mentions("created devices desktop", "top"));
    assert!(!mentions("created top_b", "top"));
    assert!(!mentions("anything", ""));
}

#[test]
fn at_most_the_last_events_are_shown() {
    let events: Vec<EventLine> = (0..15)
        .map(|i| {
            event(
                &format!("2026-12-01T10:{i:02}:00Z"),
                "Synced",
                &format!("lower-layer sync {i}"),
            )
        })
        .collect();
    let text = render(
        &tutorial(),
        "lower-layer",
        &events,
        at("2026-12-01T12:00:00Z"),
    )
    .unwrap();
    assert!(
        !text.contains("sync 4\n") && text.contains("sync 5\n") && text.contains("sync 14\n"),
        "{text}"
    );
}

#[test]
fn a_device_whose_texts_were_left_out_says_where_to_look() {
    let mut h = tutorial();
    let status = h.status.as_mut().unwrap();
    status.details_omitted = Some(950);
    let device = &mut status.devices[0];
    device.drift.clear();
    device.modules.as_mut().unwrap().failing.clear();
    let text = render(&h, "lower-layer", &[], at("2026-12-01T12:00:00Z")).unwrap();
    assert!(
        text.contains("left out of the status to keep it within its size budget (950 devices)"),
        "{text}"
    );
    // A device that keeps its texts does not get the line.
    let text = render(&tutorial(), "lower-layer", &[], at("2026-12-01T12:00:00Z")).unwrap();
    assert!(!text.contains("left out"), "{text}");
}
