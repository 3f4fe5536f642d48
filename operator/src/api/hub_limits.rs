//! The spec's `iotHub.rateLimits` in the hub client's own terms: the client knows nothing of the
//! CRD, so the conversion lives on this side of the boundary.

use super::spec::{HubSku, RateLimitsSpec};
use crate::iothub::{HubTier, RateLimits};

impl From<HubSku> for HubTier {
    fn from(sku: HubSku) -> Self {
        match sku {
            HubSku::S1 => HubTier::S1,
            HubSku::S2 => HubTier::S2,
            HubSku::S3 => HubTier::S3,
        }
    }
}

impl From<&RateLimitsSpec> for RateLimits {
    fn from(spec: &RateLimitsSpec) -> Self {
        RateLimits {
            sku: spec.sku.unwrap_or_default().into(),
            units: spec.units.unwrap_or(1).max(1),
            registry_operations_per_minute: spec.registry_operations_per_minute,
            queries_per_minute: spec.queries_per_minute,
            configurations_per_minute: spec.configurations_per_minute,
            twin_operations_per_minute: spec.twin_operations_per_minute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iothub::OperationClass;

    #[test]
    fn spec_overrides_win_and_defaults_fill_in() {
        let spec = RateLimitsSpec {
            sku: Some(HubSku::S3),
            units: Some(0),
            registry_operations_per_minute: Some(600),
            queries_per_minute: None,
            configurations_per_minute: Some(5),
            twin_operations_per_minute: Some(120),
        };
        let limits = RateLimits::from(&spec);
        assert_eq!(limits.units, 1, "zero units is treated as one");
        assert_eq!(limits.per_minute(OperationClass::Registry), 600);
        assert_eq!(limits.per_minute(OperationClass::Query), 1_000);
        assert_eq!(limits.per_minute(OperationClass::Configuration), 5);
        assert_eq!(limits.per_minute(OperationClass::TwinRead), 120);
        assert_eq!(limits.per_minute(OperationClass::TwinUpdate), 120);
        assert_eq!(
            RateLimits::from(&RateLimitsSpec::default()),
            RateLimits::default()
        );
    }
}
