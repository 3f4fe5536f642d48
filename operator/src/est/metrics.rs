//! EST counters on /metrics: requests by operation, refusals by reason, enrollments by profile.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::authorize::Profile;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Issued {
    profile: &'static str,
}

#[derive(Default)]
pub struct EstMetrics {
    requests: Family<Operation, Counter>,
    refusals: Family<Reason, Counter>,
    enrollments: Family<Issued, Counter>,
}

impl EstMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "est_requests",
            "EST requests received, by operation",
            self.requests.clone(),
        );
        registry.register(
            "est_refusals",
            "EST requests refused, by reason",
            self.refusals.clone(),
        );
        registry.register(
            "est_enrollments",
            "Certificates issued over EST, by profile",
            self.enrollments.clone(),
        );
    }

    pub fn request(&self, operation: &'static str) {
        self.requests.get_or_create(&Operation { operation }).inc();
    }

    pub fn refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&Reason { reason }).inc();
    }

    pub fn enrolled(&self, profile: Profile) {
        self.enrollments
            .get_or_create(&Issued {
                profile: profile.label(),
            })
            .inc();
    }
}
