//! Fixtures: Secrets as the certificate step writes them, a root and a clock, fed through
//! `plan_certificates` and `plan_root`. Each test names the rule it covers.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::api::{LocalObjectRef, RootCaSpec};
use crate::reconcile::certs::certificate_secret;
use crate::reconcile::fixtures::{DAY, edge_ca, identity, now, root, secret_with, stored};

const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

fn edge(id: &str) -> WantedDevice {
    WantedDevice {
        id: id.into(),
        device_type: DeviceType::Edge,
    }
}

fn leaf(id: &str) -> WantedDevice {
    WantedDevice {
        id: id.into(),
        device_type: DeviceType::Leaf,
    }
}

fn keys() -> SasKeys {
    SasKeys {
        primary: "cHJpbWFyeQ==".into(),
        secondary: "c2Vjb25kYXJ5".into(),
    }
}

/// The Secret of an Edge device whose edge CA was issued `age_days` ago for 90 days, under `root`.
fn edge_secret(root: &RootCa, id: &str, age_days: u64, revision: u32) -> Secret {
    let issued = now().checked_sub(DAY * age_days as u32).unwrap();
    let ca = edge_ca(root, id, 90, issued);
    let certs = DeviceCertificates {
        secret_name: certificate_secret_name("h", id),
        not_after: ca.not_after,
        edge_ca: Some(ca),
        identity: None,
        previous_identity_thumbprints: Vec::new(),
        revision,
        sas_keys: Some(keys()),
    };
    stored(&certificate_secret("h", id, &certs, root))
}

/// The Secret of an X509 Leaf whose identity was issued `age_days` ago for 90 days.
fn identity_secret(root: &RootCa, id: &str, age_days: u64) -> (Secret, String) {
    let issued = now().checked_sub(DAY * age_days as u32).unwrap();
    let cert = identity(root, id, 90, issued);
    let thumbprint = cert.sha256_thumbprint.clone();
    let certs = DeviceCertificates {
        secret_name: certificate_secret_name("h", id),
        not_after: cert.not_after,
        edge_ca: None,
        identity: Some(cert),
        previous_identity_thumbprints: Vec::new(),
        revision: 1,
        sas_keys: None,
    };
    (
        stored(&certificate_secret("h", id, &certs, root)),
        thumbprint,
    )
}

fn plan_with(
    root: &RootCa,
    wanted: &[WantedDevice],
    existing: &BTreeMap<String, Secret>,
    x509: bool,
) -> CertPlan {
    plan_rotating(root, wanted, existing, x509, &BTreeSet::new(), &[])
}

fn plan_rotating(
    root: &RootCa,
    wanted: &[WantedDevice],
    existing: &BTreeMap<String, Secret>,
    x509: bool,
    hold_old_root: &BTreeSet<String>,
    old_roots: &[String],
) -> CertPlan {
    plan_certificates(&CertPlanInput {
        hierarchy: "h",
        wanted,
        x509,
        identity: x509,
        root,
        existing,
        renew_before: RENEW_BEFORE,
        keep_removed: false,
        hold_old_root,
        old_roots,
        now: now(),
    })
}

#[test]
fn new_devices_are_issued_for_the_first_time_with_new_sas_keys() {
    let root = root("h");
    let plan = plan_with(&root, &[edge("top")], &BTreeMap::new(), false);
    assert!(plan.reuse.is_empty() && plan.delete.is_empty());
    assert_eq!(
        plan.issue,
        [IssueJob {
            id: "top".into(),
            device_type: DeviceType::Edge,
            secret_name: certificate_secret_name("h", "top"),
            revision: 1,
            previous_identities: Vec::new(),
            sas_keys: SasKeyPlan::Generate,
            renewal: false,
        }]
    );
    assert_eq!(plan.trust_bundle, std::slice::from_ref(&root.cert_pem));
}

#[test]
fn current_certificates_are_kept_as_they_are() {
    let root = root("h");
    let existing = BTreeMap::from([("top".to_string(), edge_secret(&root, "top", 10, 3))]);
    let plan = plan_with(&root, &[edge("top")], &existing, false);
    assert!(plan.issue.is_empty());
    let kept = &plan.reuse["top"];
    assert_eq!(kept.revision, 3);
    assert_eq!(kept.sas_keys, Some(keys()));
    assert!(kept.edge_ca.is_some() && kept.identity.is_none());
}

#[test]
fn certificates_due_for_renewal_are_reissued_with_the_same_sas_keys() {
    let root = root("h");
    // Issued 70 days ago for 90: 20 days left, inside the 30-day renewal window.
    let existing = BTreeMap::from([("top".to_string(), edge_secret(&root, "top", 70, 3))]);
    let plan = plan_with(&root, &[edge("top")], &existing, false);
    assert!(plan.reuse.is_empty());
    let job = &plan.issue[0];
    assert_eq!((job.revision, job.renewal), (4, true));
    assert_eq!(job.sas_keys, SasKeyPlan::Keep(keys()));
}

#[test]
fn a_certificate_under_another_root_is_reissued_unless_the_rotation_holds_it() {
    let (old, new) = (root("old"), root("new"));
    let existing = BTreeMap::from([
        ("top".to_string(), edge_secret(&old, "top", 1, 1)),
        ("low".to_string(), edge_secret(&old, "low", 1, 1)),
    ]);
    let wanted = [edge("top"), edge("low")];
    let plan = plan_with(&new, &wanted, &existing, false);
    assert_eq!(plan.issue.len(), 2);
    assert!(plan.issue.iter().all(|j| j.renewal));
    assert_eq!(plan.trust_bundle, std::slice::from_ref(&new.cert_pem));

    let hold = BTreeSet::from(["low".to_string()]);
    let plan = plan_rotating(
        &new,
        &wanted,
        &existing,
        false,
        &hold,
        std::slice::from_ref(&old.cert_pem),
    );
    assert_eq!(
        plan.issue.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["top"]
    );
    assert_eq!(plan.reuse["low"].revision, 1, "kept under the old root");
    assert_eq!(
        plan.trust_bundle,
        [new.cert_pem.clone(), old.cert_pem.clone()]
    );
}

#[test]
fn old_roots_come_from_the_retired_secret_and_from_certificates_under_them() {
    let (old, older, new) = (root("old"), root("older"), root("new"));
    let existing = BTreeMap::from([
        ("top".to_string(), edge_secret(&new, "top", 1, 2)),
        ("low".to_string(), edge_secret(&old, "low", 1, 1)),
    ]);
    // A rotation beginning: the root a certificate Secret names.
    let found = old_roots(&new, &existing, None);
    assert_eq!(
        found,
        [(old.info.sha256_thumbprint.clone(), old.cert_pem.clone())]
    );
    // Under way: the retired Secret's roots first, each once; the current root never.
    let retired = secret_with(
        "h-retired-root-ca",
        &[(
            "ca.crt",
            &format!("{}{}{}", older.cert_pem, old.cert_pem, new.cert_pem),
        )],
    );
    let found: Vec<String> = old_roots(&new, &existing, Some(&retired))
        .into_iter()
        .map(|(thumbprint, _)| thumbprint)
        .collect();
    assert_eq!(
        found,
        [
            older.info.sha256_thumbprint.clone(),
            old.info.sha256_thumbprint.clone()
        ]
    );
    // No rotation: nothing.
    let existing = BTreeMap::from([("top".to_string(), edge_secret(&new, "top", 1, 2))]);
    assert!(old_roots(&new, &existing, None).is_empty());
    // The edge CA of a certificate under a root, by thumbprint.
    assert!(edge_ca_under(&existing["top"], &new.info.sha256_thumbprint).is_some());
    assert!(edge_ca_under(&existing["top"], &old.info.sha256_thumbprint).is_none());
}

#[test]
fn unreadable_certificates_are_reissued() {
    let root = root("h");
    let mut damaged = edge_secret(&root, "top", 1, 2);
    damaged.data.as_mut().unwrap().insert(
        "tls.crt".into(),
        k8s_openapi::ByteString(b"not a certificate".to_vec()),
    );
    let existing = BTreeMap::from([("top".to_string(), damaged)]);
    let plan = plan_with(&root, &[edge("top")], &existing, false);
    assert_eq!(plan.issue[0].revision, 3);
}

#[test]
fn devices_that_left_the_spec_lose_their_certificate_secrets() {
    let root = root("h");
    let existing = BTreeMap::from([
        ("top".to_string(), edge_secret(&root, "top", 1, 1)),
        ("gone".to_string(), edge_secret(&root, "gone", 1, 1)),
    ]);
    let plan = plan_with(&root, &[edge("top")], &existing, false);
    assert_eq!(plan.delete, [certificate_secret_name("h", "gone")]);
    assert!(plan.reuse.contains_key("top"));
    // Under Detach or Observe the device stays in the hub and still runs with them.
    let kept = plan_certificates(&CertPlanInput {
        hierarchy: "h",
        wanted: &[edge("top")],
        x509: false,
        identity: false,
        root: &root,
        existing: &existing,
        renew_before: RENEW_BEFORE,
        keep_removed: true,
        hold_old_root: &BTreeSet::new(),
        old_roots: &[],
        now: now(),
    });
    assert!(kept.delete.is_empty(), "{:?}", kept.delete);
    assert!(kept.reuse.contains_key("top") && !kept.reuse.contains_key("gone"));
}

#[test]
fn a_renewed_x509_identity_keeps_the_old_thumbprint_as_previous() {
    let root = root("h");
    let (secret, thumbprint) = identity_secret(&root, "sensor", 80);
    let existing = BTreeMap::from([("sensor".to_string(), secret)]);
    let plan = plan_with(&root, &[leaf("sensor")], &existing, true);
    let job = &plan.issue[0];
    assert_eq!(job.previous_identities, std::slice::from_ref(&thumbprint));
    assert_eq!(
        job.sas_keys,
        SasKeyPlan::None,
        "X509 devices have no SAS keys"
    );
    // Renewed again: the two identities before the new one are kept, newest first.
    let mut renewed = certificate_secret(
        "h",
        "sensor",
        &DeviceCertificates {
            secret_name: certificate_secret_name("h", "sensor"),
            not_after: now(),
            edge_ca: None,
            identity: Some(identity(
                &root,
                "sensor",
                90,
                now().checked_sub(DAY * 80).unwrap(),
            )),
            previous_identity_thumbprints: vec![thumbprint.clone(), "older".into()],
            revision: 2,
            sas_keys: None,
        },
        &root,
    );
    assert_eq!(
        renewed.annotations["edgehierarchy.dev/older-identity-thumbprint"],
        "older"
    );
    renewed
        .annotations
        .remove("edgehierarchy.dev/older-identity-thumbprint");
    let existing = BTreeMap::from([("sensor".to_string(), stored(&renewed))]);
    let plan = plan_with(&root, &[leaf("sensor")], &existing, true);
    let held = inspect_certificate_pem(&String::from_utf8_lossy(&renewed.data["identity.crt"]))
        .unwrap()
        .sha256_thumbprint;
    assert_eq!(
        plan.issue[0].previous_identities,
        [held, thumbprint.clone()]
    );
    // A current identity is kept.
    let (secret, _) = identity_secret(&root, "sensor", 1);
    let existing = BTreeMap::from([("sensor".to_string(), secret)]);
    assert!(
        plan_with(&root, &[leaf("sensor")], &existing, true)
            .reuse
            .contains_key("sensor")
    );
}

fn user_root(name: &str) -> RootCaSpec {
    RootCaSpec {
        secret_ref: LocalObjectRef { name: name.into() },
    }
}

#[test]
fn a_user_root_is_used_as_given_and_every_problem_with_it_needs_a_person() {
    let root = root("user");
    let spec = user_root("my-root");
    let good = secret_with(
        "my-root",
        &[("tls.crt", &root.cert_pem), ("tls.key", root.key.pem())],
    );
    match plan_root(
        Some(&spec),
        "my-root",
        Some(&good),
        &BTreeMap::new(),
        "uid-1",
        now(),
    )
    .unwrap()
    {
        RootPlan::Use { root: used, secret } => {
            assert_eq!(
                (used.cert_pem, secret),
                (root.cert_pem.clone(), "my-root".into())
            )
        }
        other => panic!("expected the user's root, got {other:?}"),
    }
    let missing = plan_root(
        Some(&spec),
        "my-root",
        None,
        &BTreeMap::new(),
        "uid-1",
        now(),
    )
    .unwrap_err();
    assert!(matches!(missing, CertError::UserRootMissing { .. }) && missing.needs_person());
    let no_key = secret_with("my-root", &[("tls.crt", &root.cert_pem)]);
    let error = plan_root(
        Some(&spec),
        "my-root",
        Some(&no_key),
        &BTreeMap::new(),
        "uid-1",
        now(),
    )
    .unwrap_err();
    assert!(matches!(
        error,
        CertError::RootKeyMissing { key: "tls.key", .. }
    ));
    let garbage = secret_with("my-root", &[("tls.crt", "x"), ("tls.key", "y")]);
    let error = plan_root(
        Some(&spec),
        "my-root",
        Some(&garbage),
        &BTreeMap::new(),
        "uid-1",
        now(),
    )
    .unwrap_err();
    assert!(matches!(error, CertError::UserRoot { .. }) && error.needs_person());
    assert!(!error.to_string().contains("PRIVATE KEY"));
}

#[test]
fn a_generated_root_is_made_once_and_never_replaced_silently() {
    let plan = plan_root(None, "h-root-ca", None, &BTreeMap::new(), "uid-1", now()).unwrap();
    assert!(matches!(plan, RootPlan::Generate { secret } if secret == "h-root-ca"));
    let root = root("h");
    let good = secret_with(
        "h-root-ca",
        &[("tls.crt", &root.cert_pem), ("tls.key", root.key.pem())],
    );
    assert!(matches!(
        plan_root(
            None,
            "h-root-ca",
            Some(&good),
            &BTreeMap::new(),
            "uid-1",
            now()
        )
        .unwrap(),
        RootPlan::Use { .. }
    ));
    let damaged = secret_with("h-root-ca", &[("tls.crt", &root.cert_pem)]);
    let error = plan_root(
        None,
        "h-root-ca",
        Some(&damaged),
        &BTreeMap::new(),
        "uid-1",
        now(),
    )
    .unwrap_err();
    assert!(matches!(error, CertError::GeneratedRootDamaged { .. }) && error.needs_person());
}

#[test]
fn a_missing_generated_root_with_device_certificates_in_use_stalls_instead_of_regenerating() {
    let root = root("h");
    let owned_by = |uid: &str| {
        let mut secret = edge_secret(&root, "top", 1, 1);
        secret.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                uid: uid.into(),
                ..Default::default()
            },
        ]);
        secret
    };
    // Ours (or released by a Detach): in use; regenerating would break every link.
    for secret in [owned_by("uid-1"), edge_secret(&root, "top", 1, 1)] {
        let certificates = BTreeMap::from([("top".to_string(), secret)]);
        let error = plan_root(None, "h-root-ca", None, &certificates, "uid-1", now()).unwrap_err();
        assert!(
            matches!(&error, CertError::GeneratedRootMissing { devices, .. } if devices == &["top"]),
            "{error:?}"
        );
        assert!(error.needs_person());
        assert!(
            error
                .to_string()
                .contains("Restore the Secret from a backup")
        );
    }
    // Left by a deleted hierarchy of the same name: garbage collection takes them; wait.
    let certificates = BTreeMap::from([("top".to_string(), owned_by("uid-0"))]);
    let error = plan_root(None, "h-root-ca", None, &certificates, "uid-1", now()).unwrap_err();
    assert!(matches!(
        error,
        CertError::RootBeingCollected { devices: 1, .. }
    ));
    assert!(!error.needs_person());
}

fn with_annotation(mut secret: Secret, key: &str, value: &str) -> Secret {
    secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.to_string(), value.to_string());
    secret
}

#[test]
fn a_renewal_request_for_the_current_revision_reissues_once() {
    let root = root("h");
    let requested = with_annotation(edge_secret(&root, "top", 10, 3), RENEW_ANNOTATION, "3");
    let existing = BTreeMap::from([("top".to_string(), requested)]);
    let plan = plan_with(&root, &[edge("top")], &existing, false);
    assert!(plan.reuse.is_empty());
    let job = &plan.issue[0];
    assert_eq!((job.revision, job.renewal), (4, true));
    assert_eq!(job.sas_keys, SasKeyPlan::Keep(keys()));
    // The request stays on the Secret after the re-issue; it names revision 3, not 4.
    let renewed = with_annotation(edge_secret(&root, "top", 0, 4), RENEW_ANNOTATION, "3");
    let existing = BTreeMap::from([("top".to_string(), renewed)]);
    let plan = plan_with(&root, &[edge("top")], &existing, false);
    assert!(plan.issue.is_empty());
    assert_eq!(plan.reuse["top"].revision, 4);
}

#[test]
fn a_renewal_request_that_is_not_a_revision_changes_nothing() {
    let root = root("h");
    for value in ["", "now", "2"] {
        let requested = with_annotation(edge_secret(&root, "top", 10, 3), RENEW_ANNOTATION, value);
        let existing = BTreeMap::from([("top".to_string(), requested)]);
        let plan = plan_with(&root, &[edge("top")], &existing, false);
        assert!(plan.issue.is_empty(), "{value:?}");
    }
}

#[test]
fn the_secondary_slot_holds_the_previous_identity_the_device_runs() {
    use crate::reconcile::certs::secondary_thumbprint;
    let previous = vec!["r2".to_string(), "r1".to_string()];
    // Nothing acknowledged: the newest previous identity.
    assert_eq!(
        secondary_thumbprint("r3", &previous, None).as_deref(),
        Some("r2")
    );
    // The device missed the renewal to r2 and still runs r1: r1 stays registered.
    assert_eq!(
        secondary_thumbprint("r3", &previous, Some("r1")).as_deref(),
        Some("r1")
    );
    // It runs the current one, or one the operator no longer knows: the newest previous.
    assert_eq!(
        secondary_thumbprint("r3", &previous, Some("r3")).as_deref(),
        Some("r2")
    );
    assert_eq!(
        secondary_thumbprint("r3", &previous, Some("r0")).as_deref(),
        Some("r2")
    );
    // Never the current one twice; none before the first renewal.
    assert_eq!(
        secondary_thumbprint("r2", &previous, None).as_deref(),
        Some("r1")
    );
    assert_eq!(secondary_thumbprint("r1", &[], Some("r1")), None);
}
