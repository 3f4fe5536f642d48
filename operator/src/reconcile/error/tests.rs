//! One case per disposition: what each kind of failure leads to.

use super::*;
use crate::api::EdgeHierarchy;
use crate::iothub::{HubOperation, HubTarget};

const TUTORIAL: &str = include_str!("../../../../examples/tutorial.yaml");

fn spec() -> EdgeHierarchySpec {
    serde_yaml::from_str::<EdgeHierarchy>(TUTORIAL)
        .unwrap()
        .spec
}

fn hub_status(status: u16) -> HubError {
    HubError::Api {
        operation: HubOperation::Query,
        target: HubTarget::Hub,
        status,
        code: None,
        message: "failed".into(),
        retry_after: None,
    }
}

fn reason_of(d: Disposition) -> (&'static str, Option<Duration>) {
    match d {
        Disposition::Stall {
            reason, recheck, ..
        } => (reason, recheck),
        other => panic!("expected a stall, got {other:?}"),
    }
}

#[test]
fn an_invalid_spec_stalls_until_the_spec_changes() {
    let error = Error::InvalidSpec(Violations(Vec::new()));
    assert_eq!(
        reason_of(error.disposition(&spec())),
        (reason::INVALID_SPEC, None)
    );
}

#[test]
fn invalid_manifests_stall_and_are_looked_at_again() {
    let error = Error::InvalidManifests(Vec::new());
    assert_eq!(
        reason_of(error.disposition(&spec())),
        (reason::INVALID_SPEC, Some(STALL_RECHECK))
    );
}

#[test]
fn missing_credentials_and_a_rejected_key_stall_as_bad_credentials() {
    let missing = Error::Credentials(CredentialError::MissingSecret {
        namespace: "iot".into(),
        secret: "iothub-service".into(),
        field: "connectionStringSecretRef",
    });
    assert_eq!(
        reason_of(missing.disposition(&spec())).0,
        reason::BAD_CREDENTIALS
    );
    let rejected = Error::Hub(hub_status(401));
    match rejected.disposition(&spec()) {
        Disposition::Stall {
            reason, message, ..
        } => {
            assert_eq!(reason, reason::BAD_CREDENTIALS);
            assert!(
                message.contains("\"iothub-service\""),
                "names the Secret: {message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bad_root_ca_stalls_but_a_failed_issue_is_retried() {
    let bad = Error::Certificates(CertError::UserRootMissing {
        secret: "my-root".into(),
    });
    assert_eq!(
        reason_of(bad.disposition(&spec())).0,
        reason::INVALID_ROOT_CA
    );
    let pki = Error::Certificates(CertError::Pki(
        crate::pki::PkiError::UnreadableCertificate {
            what: "x".into(),
            reason: "y".into(),
        },
    ));
    assert_eq!(pki.disposition(&spec()), Disposition::Retry);
}

#[test]
fn a_failing_hub_is_unreachable_and_retried_soon() {
    match Error::Hub(hub_status(503)).disposition(&spec()) {
        Disposition::Unreachable { message, retry } => {
            assert!(message.starts_with("the hub could not be reached or failed"));
            assert_eq!(retry, HUB_RETRY);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn kubernetes_and_deployment_failures_are_retried_with_backoff() {
    let render = Error::from(DeploymentError::Render("x".into()));
    assert_eq!(render.disposition(&spec()), Disposition::Retry);
    let hub = Error::from(DeploymentError::Hub(hub_status(500)));
    assert!(
        matches!(hub, Error::Hub(_)),
        "a hub failure in a step is the hub's"
    );
    assert_eq!(
        Error::CleanupIncomplete("d: 412".into()).disposition(&spec()),
        Disposition::Retry
    );
}
