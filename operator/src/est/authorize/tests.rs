//! Authorization decisions on certificates made here: a root per hierarchy, bootstrap
//! identities, EST-issued edge CAs, and the certificates an attacker would try.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::*;
use crate::api::KeyAlgorithm;
use crate::pki::{
    IdentitySigner, RootCa, certificate_ders, generate_key, generate_root_ca, issue_edge_ca,
    issue_identity_certificate,
};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn now() -> Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

fn root(name: &str) -> RootCa {
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    generate_root_ca(name, &key, 3650 * DAY, now()).unwrap()
}

fn der(pem: &str) -> Vec<u8> {
    certificate_ders(pem).unwrap().remove(0)
}

fn trust(name: &str, root: &RootCa, devices: &[(&str, bool)]) -> HierarchyTrust {
    HierarchyTrust {
        namespace: "plant".into(),
        name: name.into(),
        roots: vec![der(&root.cert_pem)],
        devices: devices
            .iter()
            .map(|(id, edge)| (id.to_string(), *edge))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn identity(root: &RootCa, id: &str, issued: Timestamp, validity: Duration) -> Vec<u8> {
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let cert =
        issue_identity_certificate(id, &key, IdentitySigner::Root(root), validity, issued).unwrap();
    der(&cert.cert_pem)
}

struct World {
    line1: RootCa,
    line2: RootCa,
    hierarchies: Vec<HierarchyTrust>,
}

fn world() -> World {
    let line1 = root("line1");
    let line2 = root("line2");
    let hierarchies = vec![
        trust("line1", &line1, &[("gw-1", true), ("sensor-1", false)]),
        trust("line2", &line2, &[("gw-2", true)]),
    ];
    World {
        line1,
        line2,
        hierarchies,
    }
}

#[test]
fn a_bootstrap_identity_enrolls_its_edge_ca_and_identity() {
    let w = world();
    let cert = identity(&w.line1, "gw-1", now(), 30 * DAY);
    let client = authenticate(Some(&cert), &w.hierarchies, now()).unwrap();
    assert_eq!(client.hierarchy, 0);
    assert_eq!(client.device_id, "gw-1");
    assert_eq!(client.thumbprint, crate::pki::sha256_thumbprint(&cert));
    assert_eq!(
        authorize(&client, &w.hierarchies, "gw-1.deviceca"),
        Ok(Profile::EdgeCa)
    );
    assert_eq!(
        authorize(&client, &w.hierarchies, "gw-1"),
        Ok(Profile::Identity)
    );
}

#[test]
fn the_hierarchy_is_the_one_whose_root_signed_the_certificate() {
    let w = world();
    let cert = identity(&w.line2, "gw-2", now(), 30 * DAY);
    let client = authenticate(Some(&cert), &w.hierarchies, now()).unwrap();
    assert_eq!(client.hierarchy, 1);
    // gw-1 exists, but in the other hierarchy: line2's root cannot vouch for it.
    let cert = identity(&w.line2, "gw-1", now(), 30 * DAY);
    let err = authenticate(Some(&cert), &w.hierarchies, now()).unwrap_err();
    assert_eq!(err.reason(), "unknown-device", "{err}");
}

#[test]
fn an_est_issued_edge_ca_authenticates_its_own_renewal() {
    let w = world();
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let edge_ca = issue_edge_ca(&w.line1, "gw-1", &key, 30 * DAY, now()).unwrap();
    let client = authenticate(Some(&der(&edge_ca.cert_pem)), &w.hierarchies, now()).unwrap();
    assert_eq!(client.device_id, "gw-1");
    assert_eq!(
        authorize(&client, &w.hierarchies, "gw-1.deviceca"),
        Ok(Profile::EdgeCa)
    );
}

#[test]
fn another_devices_name_is_refused() {
    let w = world();
    let cert = identity(&w.line1, "gw-1", now(), 30 * DAY);
    let client = authenticate(Some(&cert), &w.hierarchies, now()).unwrap();
    for requested in [
        "sensor-1",
        "sensor-1.deviceca",
        "gw-2.deviceca",
        "gw-1.deviceca.x",
        "",
    ] {
        let err = authorize(&client, &w.hierarchies, requested).unwrap_err();
        assert_eq!(err.reason(), "foreign-name", "{requested}: {err}");
        assert_eq!(err.status(), 403);
    }
}

#[test]
fn a_leaf_device_gets_no_edge_ca() {
    let w = world();
    let cert = identity(&w.line1, "sensor-1", now(), 30 * DAY);
    let client = authenticate(Some(&cert), &w.hierarchies, now()).unwrap();
    assert_eq!(
        authorize(&client, &w.hierarchies, "sensor-1"),
        Ok(Profile::Identity)
    );
    let err = authorize(&client, &w.hierarchies, "sensor-1.deviceca").unwrap_err();
    assert_eq!(err.reason(), "foreign-name");
    // Nor does a leaf's `.deviceca` name authenticate as the leaf.
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let fake = issue_edge_ca(&w.line1, "sensor-1", &key, 30 * DAY, now()).unwrap();
    let err = authenticate(Some(&der(&fake.cert_pem)), &w.hierarchies, now()).unwrap_err();
    assert_eq!(err.reason(), "unknown-device");
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let w = world();
    let old = identity(&w.line1, "gw-1", now() - 40 * DAY, 30 * DAY);
    let err = authenticate(Some(&old), &w.hierarchies, now()).unwrap_err();
    assert_eq!(err.reason(), "expired", "{err}");
    assert_eq!(err.status(), 403);
    let future = identity(&w.line1, "gw-1", now() + 10 * DAY, 30 * DAY);
    let err = authenticate(Some(&future), &w.hierarchies, now()).unwrap_err();
    assert_eq!(err.reason(), "not-yet-valid", "{err}");
}

#[test]
fn unknown_issuers_and_self_signed_certificates_are_refused() {
    let w = world();
    let stranger = root("line1");
    // Same subject as line1's root, different key: the signature decides.
    let cert = identity(&stranger, "gw-1", now(), 30 * DAY);
    let err = authenticate(Some(&cert), &w.hierarchies, now()).unwrap_err();
    assert_eq!(err.reason(), "unknown-issuer", "{err}");
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let own =
        issue_identity_certificate("gw-1", &key, IdentitySigner::SelfSigned, DAY, now()).unwrap();
    let err = authenticate(Some(&der(&own.cert_pem)), &w.hierarchies, now()).unwrap_err();
    assert_eq!(err.reason(), "unknown-issuer", "{err}");
    // A root signs itself, but it is no client certificate: no device is named "line2 root CA".
    let err = authenticate(Some(&der(&w.line2.cert_pem)), &w.hierarchies, now()).unwrap_err();
    assert_eq!(err.reason(), "unknown-device", "{err}");
}

#[test]
fn no_or_garbage_certificate_is_refused() {
    let w = world();
    let err = authenticate(None, &w.hierarchies, now()).unwrap_err();
    assert_eq!((err.reason(), err.status()), ("no-client-certificate", 401));
    let err = authenticate(Some(b"not a certificate"), &w.hierarchies, now()).unwrap_err();
    assert_eq!(err.reason(), "unreadable-certificate");
}

#[test]
fn an_old_root_still_in_rotation_is_accepted() {
    let mut w = world();
    let new_root = root("line1");
    let old = w.hierarchies[0].roots[0].clone();
    w.hierarchies[0].roots = vec![der(&new_root.cert_pem), old];
    let cert = identity(&w.line1, "gw-1", now(), 30 * DAY);
    let client = authenticate(Some(&cert), &w.hierarchies, now()).unwrap();
    assert_eq!(client.hierarchy, 0);
}
