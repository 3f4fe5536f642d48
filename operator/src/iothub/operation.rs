//! The calls the client makes, and the hub throttle each one counts against.

use std::fmt;

/// One kind of hub call; used in errors, counters and rate limiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HubOperation {
    /// `GET /devices/{id}`
    GetDevice,
    /// `PUT /devices/{id}`
    CreateOrUpdateDevice,
    /// `DELETE /devices/{id}`
    DeleteDevice,
    /// `POST /devices` (bulk registry)
    BulkDevices,
    /// `POST /devices/query`
    Query,
    /// `GET /twins/{id}`
    GetTwin,
    /// `PATCH /twins/{id}`
    UpdateTwin,
    /// `PUT /twins/{id}`
    ReplaceTwin,
    /// `GET /twins/{id}/modules/{mid}`
    GetModuleTwin,
    /// `GET /devices/{id}/modules`
    ListModules,
    /// `GET /configurations/{id}`
    GetConfiguration,
    /// `PUT /configurations/{id}`
    CreateOrUpdateConfiguration,
    /// `DELETE /configurations/{id}`
    DeleteConfiguration,
    /// `GET /configurations`
    ListConfigurations,
    /// `POST /devices/{id}/applyConfigurationContent`
    ApplyConfigurationContent,
}

impl HubOperation {
    /// Every operation, for tables and exhaustive tests.
    pub const ALL: [HubOperation; 15] = [
        HubOperation::GetDevice,
        HubOperation::CreateOrUpdateDevice,
        HubOperation::DeleteDevice,
        HubOperation::BulkDevices,
        HubOperation::Query,
        HubOperation::GetTwin,
        HubOperation::UpdateTwin,
        HubOperation::ReplaceTwin,
        HubOperation::GetModuleTwin,
        HubOperation::ListModules,
        HubOperation::GetConfiguration,
        HubOperation::CreateOrUpdateConfiguration,
        HubOperation::DeleteConfiguration,
        HubOperation::ListConfigurations,
        HubOperation::ApplyConfigurationContent,
    ];

    /// Stable snake_case name (log fields, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            HubOperation::GetDevice => "get_device",
            HubOperation::CreateOrUpdateDevice => "create_or_update_device",
            HubOperation::DeleteDevice => "delete_device",
            HubOperation::BulkDevices => "bulk_devices",
            HubOperation::Query => "query",
            HubOperation::GetTwin => "get_twin",
            HubOperation::UpdateTwin => "update_twin",
            HubOperation::ReplaceTwin => "replace_twin",
            HubOperation::GetModuleTwin => "get_module_twin",
            HubOperation::ListModules => "list_modules",
            HubOperation::GetConfiguration => "get_configuration",
            HubOperation::CreateOrUpdateConfiguration => "create_or_update_configuration",
            HubOperation::DeleteConfiguration => "delete_configuration",
            HubOperation::ListConfigurations => "list_configurations",
            HubOperation::ApplyConfigurationContent => "apply_configuration_content",
        }
    }

    /// Whether the call changes hub state (used to count writes).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            HubOperation::CreateOrUpdateDevice
                | HubOperation::DeleteDevice
                | HubOperation::BulkDevices
                | HubOperation::UpdateTwin
                | HubOperation::ReplaceTwin
                | HubOperation::CreateOrUpdateConfiguration
                | HubOperation::DeleteConfiguration
                | HubOperation::ApplyConfigurationContent
        )
    }

    /// The hub throttle this call counts against.
    ///
    /// Identity reads, writes and bulk calls share one class because the hub counts them
    /// against one "identity registry operations" throttle (a bulk call costs one per device).
    /// `applyConfigurationContent` is an edge deployment, which the quota table puts with
    /// configurations.
    pub fn class(self) -> OperationClass {
        match self {
            HubOperation::GetDevice
            | HubOperation::CreateOrUpdateDevice
            | HubOperation::DeleteDevice
            | HubOperation::BulkDevices
            | HubOperation::ListModules => OperationClass::Registry,
            HubOperation::Query => OperationClass::Query,
            HubOperation::GetTwin | HubOperation::GetModuleTwin => OperationClass::TwinRead,
            HubOperation::UpdateTwin | HubOperation::ReplaceTwin => OperationClass::TwinUpdate,
            HubOperation::GetConfiguration
            | HubOperation::CreateOrUpdateConfiguration
            | HubOperation::DeleteConfiguration
            | HubOperation::ListConfigurations
            | HubOperation::ApplyConfigurationContent => OperationClass::Configuration,
        }
    }
}

impl fmt::Display for HubOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hub throttle classes (IoT Hub quotas and throttling, per hub).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OperationClass {
    /// Identity registry: create, retrieve, list, update, delete; bulk per device.
    Registry,
    /// Device and module queries.
    Query,
    /// Device and module twin reads.
    TwinRead,
    /// Device and module twin updates.
    TwinUpdate,
    /// Configurations and edge deployments.
    Configuration,
}

impl OperationClass {
    /// Every class.
    pub const ALL: [OperationClass; 5] = [
        OperationClass::Registry,
        OperationClass::Query,
        OperationClass::TwinRead,
        OperationClass::TwinUpdate,
        OperationClass::Configuration,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationClass::Registry => "registry",
            OperationClass::Query => "query",
            OperationClass::TwinRead => "twin_read",
            OperationClass::TwinUpdate => "twin_update",
            OperationClass::Configuration => "configuration",
        }
    }
}

impl fmt::Display for OperationClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_every_class_is_used() {
        let names: HashSet<_> = HubOperation::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), HubOperation::ALL.len());
        let classes: HashSet<_> = HubOperation::ALL.iter().map(|o| o.class()).collect();
        assert_eq!(classes.len(), OperationClass::ALL.len());
    }

    #[test]
    fn bulk_counts_against_the_identity_registry() {
        assert_eq!(HubOperation::BulkDevices.class(), OperationClass::Registry);
        assert!(HubOperation::BulkDevices.is_write());
        assert!(!HubOperation::Query.is_write());
    }
}
