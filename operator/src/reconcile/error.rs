//! Why a reconcile ended early, and what follows from each reason: its [`Disposition`]. One
//! table, so every step's failure is routed the same way (see `sync::settle`).

use std::time::Duration;

use jiff::Timestamp;

use super::certs::CertError;
use super::credentials::CredentialError;
use super::deployments::DeploymentError;
use super::proof_keys::ProofKeyError;
use super::registry_auth::RegistryAuthErrors;
use super::status::reason;
use crate::api::{EdgeHierarchySpec, Violations};
use crate::deploy::ManifestError;
use crate::iothub::HubError;

/// Errors that end a reconcile early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidSpec(Violations),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidManifests(Vec<ManifestError>),
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("IoT Hub error: {0}")]
    Hub(#[from] HubError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error(transparent)]
    Certificates(#[from] CertError),
    #[error(transparent)]
    Deployments(DeploymentError),
    #[error(transparent)]
    RegistryAuth(RegistryAuthErrors),
    #[error(transparent)]
    ProofKey(#[from] ProofKeyError),
    #[error("could not delete every device from the hub: {0}; retrying")]
    CleanupIncomplete(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl From<DeploymentError> for Error {
    fn from(error: DeploymentError) -> Self {
        match error {
            DeploymentError::Hub(e) => Error::Hub(e),
            other => Error::Deployments(other),
        }
    }
}

/// What a failed reconcile leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Only a person can fix it: `Stalled=True` with this reason and one Warning Event; look
    /// again after `recheck`, or only when the hierarchy or one of its Secrets changes (`None`).
    Stall {
        reason: &'static str,
        action: &'static str,
        message: String,
        recheck: Option<Duration>,
    },
    /// The hub failed, could not be reached or refuses calls for now: `Ready=False` with
    /// `reason` without stalling, a Warning Event, and another try after `retry`.
    Unreachable {
        reason: &'static str,
        message: String,
        retry: Duration,
    },
    /// Anything else: the controller retries with its backoff.
    Retry,
}

/// How often a stalled hierarchy whose cause has no watch (a ConfigMap, the root CA's content)
/// is looked at again.
const STALL_RECHECK: Duration = Duration::from_secs(300);
/// How soon a hub that failed is tried again.
const HUB_RETRY: Duration = Duration::from_secs(30);

/// How long until IoT Hub resets daily message quotas (00:00 UTC), plus a minute so the first
/// call after the wait is past the reset.
pub fn until_quota_reset(now: Timestamp) -> Duration {
    const DAY: i64 = 86_400;
    let seconds = now.as_second();
    let next_midnight = (seconds.div_euclid(DAY) + 1) * DAY;
    Duration::from_secs((next_midnight - seconds) as u64 + 60)
}

/// Whether the hub refused a request as such (its content, size or form), so that the same
/// request can never succeed: not a failure of the hub, a throttle, or a race (404, 409, 412).
fn is_rejected_request(error: &HubError) -> bool {
    matches!(error, HubError::Api { .. })
        && matches!(error.status(), Some(400 | 413 | 414 | 415 | 422))
}

impl Error {
    /// The disposition of this error for a hierarchy with `spec`, at `now`.
    pub fn disposition(&self, spec: &EdgeHierarchySpec, now: Timestamp) -> Disposition {
        let stall = |reason, action, message: String, recheck| Disposition::Stall {
            reason,
            action,
            message,
            recheck,
        };
        match self {
            Error::InvalidSpec(v) => stall(reason::INVALID_SPEC, "Validate", v.to_string(), None),
            Error::InvalidManifests(_) => stall(
                reason::INVALID_SPEC,
                "Validate",
                self.to_string(),
                Some(STALL_RECHECK),
            ),
            // The spec names a registry Secret that is missing or incomplete. Like the hub
            // credentials, the Secret watch brings a fix in at once; the recheck is a fallback.
            Error::RegistryAuth(e) => stall(
                reason::INVALID_SPEC,
                "ReadRegistryCredentials",
                e.to_string(),
                Some(STALL_RECHECK),
            ),
            // The API server failed to answer: nothing is wrong with the credentials, and the
            // next try (with backoff) will most likely read them.
            Error::Credentials(CredentialError::Unreadable {
                transient: true, ..
            }) => Disposition::Retry,
            // A fix to the Secret triggers a reconcile through the Secret watch; the recheck is
            // a fallback.
            Error::Credentials(e) => stall(
                reason::BAD_CREDENTIALS,
                "ReadCredentials",
                e.to_string(),
                Some(STALL_RECHECK),
            ),
            Error::Certificates(e) if e.needs_person() => stall(
                reason::INVALID_ROOT_CA,
                "IssueCertificates",
                e.to_string(),
                Some(STALL_RECHECK),
            ),
            Error::Hub(e) if e.is_unauthorized() => {
                let secret = &spec.iot_hub.connection_string_secret_ref;
                let rejected = CredentialError::Rejected {
                    secret: secret.name.clone(),
                    key: secret.key.clone(),
                    detail: e.to_string(),
                };
                stall(
                    reason::BAD_CREDENTIALS,
                    "ReadCredentials",
                    rejected.to_string(),
                    Some(STALL_RECHECK),
                )
            }
            // Waiting is all there is to do: calls before the reset fail and would only add to
            // the count, so the next try is right after it.
            Error::Hub(e) if e.is_quota_exceeded() => {
                let retry = until_quota_reset(now);
                Disposition::Unreachable {
                    reason: reason::HUB_QUOTA_EXCEEDED,
                    message: format!(
                        "the hub's daily message quota is used up ({e}); IoT Hub refuses calls \
                         until it resets at 00:00 UTC, so the next try is in {} min. To go on \
                         sooner, add units to the hub or move it to a larger tier, or lengthen \
                         policy.resyncInterval so each day uses fewer messages",
                        retry.as_secs().div_ceil(60)
                    ),
                    retry,
                }
            }
            // The hub refused the request itself (400, 413, ...): sending it again fails the
            // same way and spends the hub's quota, so a person must change what is sent.
            Error::Hub(e) if is_rejected_request(e) => stall(
                reason::HUB_REJECTED,
                "WriteHub",
                format!(
                    "the hub refused a request as invalid: {e}. Correct the part of the spec it \
                     names (a deployment's content, a device id or a limit of the hub's tier); \
                     the operator tries again when the hierarchy changes, or in {} min",
                    STALL_RECHECK.as_secs() / 60
                ),
                Some(STALL_RECHECK),
            ),
            Error::ProofKey(e @ ProofKeyError::Invalid { .. }) => stall(
                reason::OWNERSHIP_KEY_INVALID,
                "ReadOwnershipKey",
                e.to_string(),
                Some(STALL_RECHECK),
            ),
            Error::Hub(e) => Disposition::Unreachable {
                reason: reason::HUB_UNREACHABLE,
                message: format!("the hub could not be reached or failed: {e}"),
                retry: HUB_RETRY,
            },
            _ => Disposition::Retry,
        }
    }
}

#[cfg(test)]
mod tests;
