//! Maps a method and a percent-decoded path onto the operation it names, and tells what each
//! operation needs: the permission, the quota class, whether it writes.

use crate::auth::Permission;

/// Every operation the emulator serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    ListDevices,
    BulkRegistry,
    QueryTwins,
    PutDevice(String),
    GetDevice(String),
    DeleteDevice(String),
    ApplyConfigurationContent(String),
    ListModules(String),
    PutModule(String, String),
    GetModule(String, String),
    DeleteModule(String, String),
    GetTwin(String),
    UpdateTwin(String),
    ReplaceTwin(String),
    GetModuleTwin(String, String),
    UpdateModuleTwin(String, String),
    ReplaceModuleTwin(String, String),
    ListConfigurations,
    TestQueries,
    PutConfiguration(String),
    GetConfiguration(String),
    DeleteConfiguration(String),
    DeviceStatistics,
    ServiceStatistics,
    /// Device-facing (the emulator's own): read the twin of the device or one of its modules.
    DeviceReadTwin(String, Option<String>),
    /// Device-facing: patch reported properties.
    DevicePatchReported(String, Option<String>),
    /// Device-facing: send a telemetry message (same path as IoT Hub's HTTPS device API).
    DeviceSendEvent(String, Option<String>),
    EmulatorStats,
    EmulatorStatsReset,
    EmulatorGetFaults,
    EmulatorSetFaults,
    EmulatorOutage,
    EmulatorWrites,
}

/// Why no operation matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// No such path.
    NotFound,
    /// The path exists but not with this method.
    MethodNotAllowed,
}

/// Quota class of an operation (Microsoft Learn, "IoT Hub quotas and throttling").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OperationClass {
    /// Identity registry: create, retrieve, list, update, delete (bulk counts per device).
    Registry,
    /// Queries.
    Query,
    /// Twin reads (device and module).
    TwinRead,
    /// Twin updates (device and module).
    TwinUpdate,
    /// Configurations and edge deployments: create, update, list, delete (and apply).
    Configurations,
    /// Not throttled: statistics, configuration reads, device-facing calls.
    Unthrottled,
}

impl OperationClass {
    /// Name used in the stats JSON.
    pub fn name(self) -> &'static str {
        match self {
            OperationClass::Registry => "registry",
            OperationClass::Query => "query",
            OperationClass::TwinRead => "twinRead",
            OperationClass::TwinUpdate => "twinUpdate",
            OperationClass::Configurations => "configurations",
            OperationClass::Unthrottled => "unthrottled",
        }
    }
}

/// Who may call an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A service policy token with this permission.
    Service(Permission),
    /// A device (or module) credential for this device, or a policy with DeviceConnect.
    Device {
        device_id: String,
        module_id: Option<String>,
    },
    /// The emulator's control endpoints: no credentials (loopback only).
    Open,
}

/// Splits a raw path into percent-decoded segments. `None` when a segment is not UTF-8.
pub fn decode_segments(raw_path: &str) -> Option<Vec<String>> {
    raw_path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        })
        .collect()
}

/// Finds the operation for a method and decoded path segments.
pub fn route(method: &str, segments: &[String]) -> Result<Route, RouteError> {
    if let Some(route) = match_route(method, segments) {
        return Ok(route);
    }
    // Same path with another method: 405, so a client bug is not mistaken for a missing device.
    let other_methods = ["GET", "PUT", "POST", "PATCH", "DELETE"];
    if other_methods
        .iter()
        .any(|other| *other != method && match_route(other, segments).is_some())
    {
        return Err(RouteError::MethodNotAllowed);
    }
    Err(RouteError::NotFound)
}

fn match_route(method: &str, segments: &[String]) -> Option<Route> {
    use Route::*;
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let own = |s: &str| s.to_string();
    match (seg.as_slice(), method) {
        (["devices"], "GET") => Some(ListDevices),
        (["devices"], "POST") => Some(BulkRegistry),
        (["devices", "query"], "POST") => Some(QueryTwins),
        (["devices", id], "PUT") => Some(PutDevice(own(id))),
        (["devices", id], "GET") => Some(GetDevice(own(id))),
        (["devices", id], "DELETE") => Some(DeleteDevice(own(id))),
        (["devices", id, "applyConfigurationContent"], "POST") => {
            Some(ApplyConfigurationContent(own(id)))
        }
        (["devices", id, "modules"], "GET") => Some(ListModules(own(id))),
        (["devices", id, "modules", m], "PUT") => Some(PutModule(own(id), own(m))),
        (["devices", id, "modules", m], "GET") => Some(GetModule(own(id), own(m))),
        (["devices", id, "modules", m], "DELETE") => Some(DeleteModule(own(id), own(m))),
        (["twins", id], "GET") => Some(GetTwin(own(id))),
        (["twins", id], "PATCH") => Some(UpdateTwin(own(id))),
        (["twins", id], "PUT") => Some(ReplaceTwin(own(id))),
        (["twins", id, "modules", m], "GET") => Some(GetModuleTwin(own(id), own(m))),
        (["twins", id, "modules", m], "PATCH") => Some(UpdateModuleTwin(own(id), own(m))),
        (["twins", id, "modules", m], "PUT") => Some(ReplaceModuleTwin(own(id), own(m))),
        (["configurations"], "GET") => Some(ListConfigurations),
        (["configurations", "testQueries"], "POST") => Some(TestQueries),
        (["configurations", id], "PUT") => Some(PutConfiguration(own(id))),
        (["configurations", id], "GET") => Some(GetConfiguration(own(id))),
        (["configurations", id], "DELETE") => Some(DeleteConfiguration(own(id))),
        (["statistics", "devices"], "GET") => Some(DeviceStatistics),
        (["statistics", "service"], "GET") => Some(ServiceStatistics),
        (["devices", id, "twin"], "GET") => Some(DeviceReadTwin(own(id), None)),
        (["devices", id, "twin", "reported"], "PATCH") => Some(DevicePatchReported(own(id), None)),
        (["devices", id, "modules", m, "twin"], "GET") => {
            Some(DeviceReadTwin(own(id), Some(own(m))))
        }
        (["devices", id, "modules", m, "twin", "reported"], "PATCH") => {
            Some(DevicePatchReported(own(id), Some(own(m))))
        }
        (["devices", id, "messages", "events"], "POST") => Some(DeviceSendEvent(own(id), None)),
        (["devices", id, "modules", m, "messages", "events"], "POST") => {
            Some(DeviceSendEvent(own(id), Some(own(m))))
        }
        (["_emulator", "stats"], "GET") => Some(EmulatorStats),
        (["_emulator", "stats", "reset"], "POST") => Some(EmulatorStatsReset),
        (["_emulator", "faults"], "GET") => Some(EmulatorGetFaults),
        (["_emulator", "faults"], "PUT" | "POST") => Some(EmulatorSetFaults),
        (["_emulator", "outage"], "PUT" | "POST") => Some(EmulatorOutage),
        (["_emulator", "writes"], "GET") => Some(EmulatorWrites),
        _ => None,
    }
}

impl Route {
    /// Name of the operation in the stats JSON, e.g. `devices.create`. A device or configuration
    /// PUT is a create without `If-Match` and an update with it.
    pub fn name(&self, has_if_match: bool) -> &'static str {
        use Route::*;
        match self {
            ListDevices => "devices.list",
            BulkRegistry => "devices.bulk",
            QueryTwins => "devices.query",
            PutDevice(_) if has_if_match => "devices.update",
            PutDevice(_) => "devices.create",
            GetDevice(_) => "devices.get",
            DeleteDevice(_) => "devices.delete",
            ApplyConfigurationContent(_) => "devices.applyConfigurationContent",
            ListModules(_) => "modules.list",
            PutModule(..) if has_if_match => "modules.update",
            PutModule(..) => "modules.create",
            GetModule(..) => "modules.get",
            DeleteModule(..) => "modules.delete",
            GetTwin(_) => "twins.get",
            UpdateTwin(_) => "twins.update",
            ReplaceTwin(_) => "twins.replace",
            GetModuleTwin(..) => "moduleTwins.get",
            UpdateModuleTwin(..) => "moduleTwins.update",
            ReplaceModuleTwin(..) => "moduleTwins.replace",
            ListConfigurations => "configurations.list",
            TestQueries => "configurations.testQueries",
            PutConfiguration(_) if has_if_match => "configurations.update",
            PutConfiguration(_) => "configurations.create",
            GetConfiguration(_) => "configurations.get",
            DeleteConfiguration(_) => "configurations.delete",
            DeviceStatistics => "statistics.devices",
            ServiceStatistics => "statistics.service",
            DeviceReadTwin(..) => "device.twin.get",
            DevicePatchReported(..) => "device.twin.patchReported",
            DeviceSendEvent(..) => "device.messages.send",
            EmulatorStats | EmulatorStatsReset | EmulatorGetFaults | EmulatorSetFaults
            | EmulatorOutage | EmulatorWrites => "emulator",
        }
    }

    /// Quota class (Microsoft Learn, "IoT Hub quotas and throttling").
    pub fn class(&self) -> OperationClass {
        use OperationClass as C;
        use Route::*;
        match self {
            ListDevices | BulkRegistry | PutDevice(_) | GetDevice(_) | DeleteDevice(_)
            | ListModules(_) | PutModule(..) | GetModule(..) | DeleteModule(..) => C::Registry,
            QueryTwins => C::Query,
            GetTwin(_) | GetModuleTwin(..) => C::TwinRead,
            UpdateTwin(_) | ReplaceTwin(_) | UpdateModuleTwin(..) | ReplaceModuleTwin(..) => {
                C::TwinUpdate
            }
            ListConfigurations
            | PutConfiguration(_)
            | DeleteConfiguration(_)
            | ApplyConfigurationContent(_) => C::Configurations,
            _ => C::Unthrottled,
        }
    }

    /// Whether the operation changes hub state (what "write calls" counts).
    pub fn is_write(&self) -> bool {
        use Route::*;
        matches!(
            self,
            BulkRegistry
                | PutDevice(_)
                | DeleteDevice(_)
                | ApplyConfigurationContent(_)
                | PutModule(..)
                | DeleteModule(..)
                | UpdateTwin(_)
                | ReplaceTwin(_)
                | UpdateModuleTwin(..)
                | ReplaceModuleTwin(..)
                | PutConfiguration(_)
                | DeleteConfiguration(_)
                | DevicePatchReported(..)
        )
    }

    /// Whether this is one of the emulator's control endpoints (not counted, not throttled).
    pub fn is_emulator_control(&self) -> bool {
        matches!(
            self,
            Route::EmulatorStats
                | Route::EmulatorStatsReset
                | Route::EmulatorGetFaults
                | Route::EmulatorSetFaults
                | Route::EmulatorOutage
                | Route::EmulatorWrites
        )
    }

    /// Who may call it.
    pub fn access(&self) -> Access {
        use Permission::*;
        use Route::*;
        match self {
            ListDevices | GetDevice(_) | ListModules(_) | GetModule(..) | DeviceStatistics
            | GetConfiguration(_) | ListConfigurations | TestQueries => {
                Access::Service(RegistryRead)
            }
            BulkRegistry
            | PutDevice(_)
            | DeleteDevice(_)
            | PutModule(..)
            | DeleteModule(..)
            | PutConfiguration(_)
            | DeleteConfiguration(_)
            | ApplyConfigurationContent(_) => Access::Service(RegistryWrite),
            QueryTwins
            | GetTwin(_)
            | UpdateTwin(_)
            | ReplaceTwin(_)
            | GetModuleTwin(..)
            | UpdateModuleTwin(..)
            | ReplaceModuleTwin(..)
            | ServiceStatistics => Access::Service(ServiceConnect),
            DeviceReadTwin(d, m) | DevicePatchReported(d, m) | DeviceSendEvent(d, m) => {
                Access::Device {
                    device_id: d.clone(),
                    module_id: m.clone(),
                }
            }
            EmulatorStats | EmulatorStatsReset | EmulatorGetFaults | EmulatorSetFaults
            | EmulatorOutage | EmulatorWrites => Access::Open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: &str, path: &str) -> Result<Route, RouteError> {
        route(method, &decode_segments(path).unwrap())
    }

    #[test]
    fn percent_encoded_segments_are_decoded() {
        assert_eq!(
            r("GET", "/twins/edge1/modules/%24edgeAgent"),
            Ok(Route::GetModuleTwin("edge1".into(), "$edgeAgent".into()))
        );
        assert_eq!(
            r("GET", "/devices/a%23b%3Fc"),
            Ok(Route::GetDevice("a#b?c".into()))
        );
    }

    #[test]
    fn static_segments_win_over_ids() {
        assert_eq!(r("POST", "/devices/query"), Ok(Route::QueryTwins));
        assert_eq!(
            r("POST", "/configurations/testQueries"),
            Ok(Route::TestQueries)
        );
        assert_eq!(
            r("GET", "/configurations/testQueries"),
            Ok(Route::GetConfiguration("testQueries".into()))
        );
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(r("GET", "/nothing"), Err(RouteError::NotFound));
        assert_eq!(r("PATCH", "/devices/d1"), Err(RouteError::MethodNotAllowed));
        assert_eq!(
            r("GET", "/devices/d1/modules/m/x/y"),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn device_facing_routes() {
        assert_eq!(
            r("PATCH", "/devices/e1/modules/%24edgeAgent/twin/reported"),
            Ok(Route::DevicePatchReported(
                "e1".into(),
                Some("$edgeAgent".into())
            ))
        );
        assert_eq!(
            r("POST", "/devices/e1/messages/events"),
            Ok(Route::DeviceSendEvent("e1".into(), None))
        );
    }

    #[test]
    fn operation_metadata() {
        assert_eq!(Route::PutDevice("d".into()).name(false), "devices.create");
        assert_eq!(Route::PutDevice("d".into()).name(true), "devices.update");
        assert_eq!(Route::BulkRegistry.class(), OperationClass::Registry);
        assert!(Route::BulkRegistry.is_write());
        assert!(!Route::GetDevice("d".into()).is_write());
        assert_eq!(
            Route::GetTwin("d".into()).access(),
            Access::Service(Permission::ServiceConnect)
        );
    }
}
