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

/// 2026-12-01T12:00:00Z.
fn noon() -> Timestamp {
    "2026-12-01T12:00:00Z".parse().unwrap()
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
        reason_of(error.disposition(&spec(), noon())),
        (reason::INVALID_SPEC, None)
    );
}

#[test]
fn invalid_manifests_stall_and_are_looked_at_again() {
    let error = Error::InvalidManifests(Vec::new());
    assert_eq!(
        reason_of(error.disposition(&spec(), noon())),
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
        reason_of(missing.disposition(&spec(), noon())).0,
        reason::BAD_CREDENTIALS
    );
    let rejected = Error::Hub(hub_status(401));
    match rejected.disposition(&spec(), noon()) {
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
        reason_of(bad.disposition(&spec(), noon())).0,
        reason::INVALID_ROOT_CA
    );
    let pki = Error::Certificates(CertError::Pki(
        crate::pki::PkiError::UnreadableCertificate {
            what: "x".into(),
            reason: "y".into(),
        },
    ));
    assert_eq!(pki.disposition(&spec(), noon()), Disposition::Retry);
}

#[test]
fn a_failing_hub_is_unreachable_and_retried_soon() {
    match Error::Hub(hub_status(503)).disposition(&spec(), noon()) {
        Disposition::Unreachable {
            reason: got,
            message,
            retry,
        } => {
            assert_eq!(got, reason::HUB_UNREACHABLE);
            assert!(message.starts_with("the hub could not be reached or failed"));
            assert_eq!(retry, HUB_RETRY);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn kubernetes_and_deployment_failures_are_retried_with_backoff() {
    let render = Error::from(DeploymentError::Render("x".into()));
    assert_eq!(render.disposition(&spec(), noon()), Disposition::Retry);
    let hub = Error::from(DeploymentError::Hub(hub_status(500)));
    assert!(
        matches!(hub, Error::Hub(_)),
        "a hub failure in a step is the hub's"
    );
    assert_eq!(
        Error::CleanupIncomplete("d: 412".into()).disposition(&spec(), noon()),
        Disposition::Retry
    );
}

#[test]
fn a_used_up_daily_quota_waits_until_the_reset_at_midnight_utc() {
    let quota = HubError::Api {
        operation: HubOperation::Query,
        target: HubTarget::Hub,
        status: 403,
        code: Some("IotHubQuotaExceeded".into()),
        message: "Total number of messages on IotHub exceeded the allocated quota".into(),
        retry_after: None,
    };
    match Error::Hub(quota).disposition(&spec(), noon()) {
        Disposition::Unreachable {
            reason: got,
            message,
            retry,
        } => {
            assert_eq!(got, reason::HUB_QUOTA_EXCEEDED);
            // Twelve hours to midnight, and a minute past it.
            assert_eq!(retry, Duration::from_secs(12 * 3600 + 60));
            assert!(
                message.contains("00:00 UTC") && message.contains("721 min"),
                "{message}"
            );
            assert!(message.contains("add units"), "{message}");
        }
        other => panic!("expected a wait, got {other:?}"),
    }
    let late: Timestamp = "2026-12-01T23:59:30Z".parse().unwrap();
    assert_eq!(until_quota_reset(late), Duration::from_secs(90));
    // Another 403 (a policy without the right, say) is not the quota.
    let forbidden = HubError::Api {
        operation: HubOperation::Query,
        target: HubTarget::Hub,
        status: 403,
        code: Some("IotHubSuspended".into()),
        message: "suspended".into(),
        retry_after: None,
    };
    assert!(!forbidden.is_quota_exceeded());
}

#[test]
fn an_api_server_that_fails_a_credentials_read_is_retried_not_called_bad_credentials() {
    let unreadable = |transient| {
        Error::Credentials(CredentialError::Unreadable {
            secret: "iothub-service".into(),
            detail: "etcdserver: request timed out".into(),
            transient,
        })
    };
    assert_eq!(
        unreadable(true).disposition(&spec(), noon()),
        Disposition::Retry
    );
    // Refused (RBAC): a person must grant the read.
    assert_eq!(
        reason_of(unreadable(false).disposition(&spec(), noon())),
        (reason::BAD_CREDENTIALS, Some(STALL_RECHECK))
    );
}

#[test]
fn a_request_the_hub_refuses_as_invalid_stalls_instead_of_spending_the_quota() {
    for status in [400, 413, 422] {
        let d = Error::Hub(hub_status(status)).disposition(&spec(), noon());
        let Disposition::Stall {
            reason, message, ..
        } = &d
        else {
            panic!("{status}: {d:?}")
        };
        assert_eq!(*reason, reason::HUB_REJECTED, "{status}");
        assert!(
            message.contains("Correct the part of the spec"),
            "{message}"
        );
    }
    // A race (gone, changed meanwhile) or a throttle is retried like a failing hub.
    for status in [404, 409, 412, 429] {
        assert!(
            matches!(
                Error::Hub(hub_status(status)).disposition(&spec(), noon()),
                Disposition::Unreachable { .. }
            ),
            "{status}"
        );
    }
}

#[test]
fn an_unusable_ownership_key_stalls_but_a_failed_read_of_it_is_retried() {
    let invalid = Error::ProofKey(ProofKeyError::Invalid {
        namespace: "plant".into(),
        detail: "it has no \"key\" entry".into(),
    });
    let (reason, recheck) = reason_of(invalid.disposition(&spec(), noon()));
    assert_eq!(
        (reason, recheck),
        (reason::OWNERSHIP_KEY_INVALID, Some(STALL_RECHECK))
    );
    assert!(invalid.to_string().contains("restore it from a backup"));
    let unreachable = Error::ProofKey(ProofKeyError::Kube {
        namespace: "plant".into(),
        source: kube::Error::Api(
            kube::core::Status::failure("etcd timed out", "Timeout")
                .with_code(504)
                .boxed(),
        ),
    });
    assert_eq!(unreachable.disposition(&spec(), noon()), Disposition::Retry);
}
