//! Request and response bodies of the service API, field for field as the 2021-04-12 swagger
//! spells them. Optional fields are skipped when unset so a request carries only what the
//! caller set, and nothing outside the swagger is ever sent (strict servers reject unknown
//! fields). Date-times stay strings: the hub sends `0001-01-01T00:00:00` (no zone) for times
//! never set, and a read-modify-write must send back exactly what it read.
//!
//! Types that can hold secrets (keys, deployment content with registry passwords, twin
//! properties) implement `Debug` by hand and print no values.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// JSON object with arbitrary members (tags, desired/reported properties, module content).
pub type JsonObject = Map<String, Value>;

/// `enabled` / `disabled`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum DeviceStatus {
    /// The device may connect.
    Enabled,
    /// The device is refused.
    Disabled,
}

/// `Disconnected` / `Connected` (capitalised on the wire).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Not connected.
    Disconnected,
    /// Connected.
    Connected,
}

/// How a device authenticates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum AuthenticationType {
    /// Symmetric keys (`sas`).
    Sas,
    /// A self-signed X.509 certificate identified by thumbprint.
    SelfSigned,
    /// An X.509 certificate chaining to a verified CA.
    CertificateAuthority,
    /// No credentials of its own (modules that inherit).
    None,
}

/// A device identity (`Device` in the swagger).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Case-sensitive id, up to 128 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Hub-generated; changes when a device is deleted and re-created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<String>,
    /// Identity etag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Read-only connection state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<ConnectionState>,
    /// Enabled or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    /// Free text, up to 128 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Date-time string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state_updated_time: Option<String>,
    /// Date-time string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_updated_time: Option<String>,
    /// Date-time string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_time: Option<String>,
    /// Queued cloud-to-device messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_message_count: Option<i32>,
    /// Credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
    /// `iotEdge` flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Edge devices: `ms-azure-iot-edge://{id}-{generationId}` (hub-generated). Leaf devices:
    /// set to the parent's scope to link to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    /// Scopes of the parent edge device (at most one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_scopes: Option<Vec<String>>,
}

/// Credentials of a device or module.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationMechanism {
    /// Keys for `sas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKey>,
    /// Thumbprints for `selfSigned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_thumbprint: Option<X509Thumbprint>,
    /// Which mechanism is used.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<AuthenticationType>,
}

impl AuthenticationMechanism {
    /// SAS with empty keys: the hub generates both keys.
    pub fn sas_generated() -> Self {
        AuthenticationMechanism {
            symmetric_key: Some(SymmetricKey {
                primary_key: Some(String::new()),
                secondary_key: Some(String::new()),
            }),
            x509_thumbprint: None,
            auth_type: Some(AuthenticationType::Sas),
        }
    }
}

/// `iotEdge` capability.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilities {
    /// Whether the device is an IoT Edge device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_edge: Option<bool>,
}

/// Base64 symmetric keys. `Debug` prints only whether each key is set.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKey {
    /// Primary key (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
    /// Secondary key (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |k: &Option<String>| match k {
            None => "<unset>",
            Some(k) if k.is_empty() => "<empty>",
            Some(_) => "<redacted>",
        };
        f.debug_struct("SymmetricKey")
            .field("primary_key", &shown(&self.primary_key))
            .field("secondary_key", &shown(&self.secondary_key))
            .finish()
    }
}

/// X.509 thumbprints (hex SHA-1 or SHA-256 of the certificate; public values).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprint {
    /// Primary thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_thumbprint: Option<String>,
    /// Secondary thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_thumbprint: Option<String>,
}

/// A module identity (`Module`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Module {
    /// Module id (`$edgeAgent`, `$edgeHub`, custom names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// `IotEdge` when the edge runtime owns the module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
    /// Owning device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Hub-generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<String>,
    /// Identity etag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Read-only connection state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<ConnectionState>,
    /// Date-time string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state_updated_time: Option<String>,
    /// Date-time string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_time: Option<String>,
    /// Queued cloud-to-module messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_message_count: Option<i32>,
    /// Credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
}

/// A device or module twin (`Twin`). Used both as a read result and as a PATCH/PUT body
/// (set only the members to change).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Module id for module twins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// Tags (solution-side metadata; the operator's ownership marker lives here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<JsonObject>,
    /// Desired and reported properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<TwinProperties>,
    /// Twin etag (covers tags and desired properties).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Twin version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Identity etag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_etag: Option<String>,
    /// Identity status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    /// Identity status reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Date-time string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_update_time: Option<String>,
    /// Connection state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<ConnectionState>,
    /// Date-time string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_time: Option<String>,
    /// Queued cloud-to-device messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_message_count: Option<i32>,
    /// Identity authentication type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_type: Option<AuthenticationType>,
    /// Identity thumbprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_thumbprint: Option<X509Thumbprint>,
    /// Identity capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Identity scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    /// Parent scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_scopes: Option<Vec<String>>,
}

/// Desired and reported twin properties (each carries `$metadata` and `$version` when read).
/// `Debug` lists only the top-level names: `$edgeAgent`'s desired properties hold registry
/// credentials.
#[derive(Serialize, Deserialize, Clone, PartialEq, Default)]
pub struct TwinProperties {
    /// Desired properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<JsonObject>,
    /// Reported properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<JsonObject>,
}

impl fmt::Debug for TwinProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwinProperties")
            .field("desired", &self.desired.as_ref().map(key_names))
            .field("reported", &self.reported.as_ref().map(key_names))
            .finish()
    }
}

fn key_names(object: &JsonObject) -> Vec<&str> {
    object.keys().map(String::as_str).collect()
}

/// An automatic device or module configuration; edge deployments are configurations with
/// `modulesContent` (`Configuration`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    /// Id (lower case, up to 128 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Schema version (`1.0`; Azure may return null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// What is applied; immutable after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ConfigurationContent>,
    /// Twin query condition selecting the targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_condition: Option<String>,
    /// Date-time string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time_utc: Option<String>,
    /// Date-time string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_time_utc: Option<String>,
    /// Higher wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Hub-computed metrics (targetedCount, appliedCount, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_metrics: Option<ConfigurationMetrics>,
    /// Custom metric queries and their results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<ConfigurationMetrics>,
    /// Configuration etag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// What a configuration applies. `Debug` names the modules and paths but prints no values:
/// `$edgeAgent` content carries registry credentials.
#[derive(Serialize, Deserialize, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationContent {
    /// Device twin content: `properties.desired.<path>` to value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_content: Option<JsonObject>,
    /// Edge deployments: module id to `properties.desired[.<path>]` to value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_content: Option<BTreeMap<String, JsonObject>>,
    /// Module twin content: `properties.desired.<path>` to value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_content: Option<JsonObject>,
}

impl fmt::Debug for ConfigurationContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let modules = self.modules_content.as_ref().map(|m| {
            m.iter()
                .map(|(module, content)| (module.as_str(), key_names(content)))
                .collect::<Vec<_>>()
        });
        f.debug_struct("ConfigurationContent")
            .field(
                "device_content",
                &self.device_content.as_ref().map(key_names),
            )
            .field("modules_content", &modules)
            .field(
                "module_content",
                &self.module_content.as_ref().map(key_names),
            )
            .finish()
    }
}

/// Metric queries and results of a configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationMetrics {
    /// Metric name to count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<BTreeMap<String, i64>>,
    /// Metric name to query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<BTreeMap<String, String>>,
}

/// What a bulk registry entry does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum ImportMode {
    /// Create; fails if the device exists.
    Create,
    /// Create or update regardless of etag.
    Update,
    /// Update only if `eTag` matches.
    UpdateIfMatchETag,
    /// Delete regardless of etag.
    Delete,
    /// Delete only if `eTag` matches.
    DeleteIfMatchETag,
    /// Update the twin regardless of etag.
    UpdateTwin,
    /// Update the twin only if `twinETag` matches.
    UpdateTwinIfMatchETag,
}

/// One entry of a bulk registry call (`ExportImportDevice`). Note the swagger's spelling of
/// `eTag` and `twinETag`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExportImportDevice {
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Module id (module entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// Identity etag for the `*IfMatchETag` modes.
    #[serde(default, rename = "eTag", skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    /// Operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_mode: Option<ImportMode>,
    /// Enabled or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    /// Status reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Credentials; SAS with generated keys when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
    /// Twin etag for `updateTwinIfMatchETag`.
    #[serde(default, rename = "twinETag", skip_serializing_if = "Option::is_none")]
    pub twin_e_tag: Option<String>,
    /// Twin tags set with the identity (so a new device is owned from its first moment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<JsonObject>,
    /// Twin properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<PropertyContainer>,
    /// `iotEdge` flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Leaf: the parent's scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    /// Edge child: `[parent scope]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_scopes: Option<Vec<String>>,
}

/// Desired/reported properties inside an [`ExportImportDevice`]. `Debug` lists names only.
#[derive(Serialize, Deserialize, Clone, PartialEq, Default)]
pub struct PropertyContainer {
    /// Desired properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<JsonObject>,
    /// Reported properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<JsonObject>,
}

impl fmt::Debug for PropertyContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropertyContainer")
            .field("desired", &self.desired.as_ref().map(key_names))
            .field("reported", &self.reported.as_ref().map(key_names))
            .finish()
    }
}

/// Response of `POST /devices` (status 200, or 400 when some entries failed).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BulkRegistryOperationResult {
    /// True when every entry succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_successful: Option<bool>,
    /// Failed entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<DeviceRegistryOperationError>>,
    /// Entries that succeeded with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<DeviceRegistryOperationWarning>>,
}

/// A failed bulk entry. `errorCode` is one of the swagger's ~200 names (`DeviceAlreadyExists`,
/// `EtagDoesNotMatch`, `InvalidDeviceScope`, ...); kept as a string so new names still parse.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistryOperationError {
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Error code name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_status: Option<String>,
    /// Module id for module entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// Which operation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// A bulk entry that succeeded with a warning (`DeviceRegisteredWithoutTwin`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistryOperationWarning {
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Warning code name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_code: Option<String>,
    /// Detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_status: Option<String>,
}

/// Body of `POST /devices/query` (`QuerySpecification`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QuerySpecification {
    /// The query text, for example `SELECT * FROM devices WHERE tags.x = 'y'`.
    pub query: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Member names per definition, copied from the swagger
    /// (the public IoT Hub service swagger for api-version 2021-04-12, `service.json` in
    /// Azure/azure-rest-api-specs, `definitions.<name>.properties`, in its order).
    const SWAGGER_PROPERTIES: &[(&str, &[&str])] = &[
        (
            "Device",
            &[
                "deviceId",
                "generationId",
                "etag",
                "connectionState",
                "status",
                "statusReason",
                "connectionStateUpdatedTime",
                "statusUpdatedTime",
                "lastActivityTime",
                "cloudToDeviceMessageCount",
                "authentication",
                "capabilities",
                "deviceScope",
                "parentScopes",
            ],
        ),
        (
            "Twin",
            &[
                "deviceId",
                "moduleId",
                "tags",
                "properties",
                "etag",
                "version",
                "deviceEtag",
                "status",
                "statusReason",
                "statusUpdateTime",
                "connectionState",
                "lastActivityTime",
                "cloudToDeviceMessageCount",
                "authenticationType",
                "x509Thumbprint",
                "capabilities",
                "deviceScope",
                "parentScopes",
            ],
        ),
        (
            "Module",
            &[
                "moduleId",
                "managedBy",
                "deviceId",
                "generationId",
                "etag",
                "connectionState",
                "connectionStateUpdatedTime",
                "lastActivityTime",
                "cloudToDeviceMessageCount",
                "authentication",
            ],
        ),
        (
            "Configuration",
            &[
                "id",
                "schemaVersion",
                "labels",
                "content",
                "targetCondition",
                "createdTimeUtc",
                "lastUpdatedTimeUtc",
                "priority",
                "systemMetrics",
                "metrics",
                "etag",
            ],
        ),
        (
            "ConfigurationContent",
            &["deviceContent", "modulesContent", "moduleContent"],
        ),
        ("ConfigurationMetrics", &["results", "queries"]),
        (
            "ExportImportDevice",
            &[
                "id",
                "moduleId",
                "eTag",
                "importMode",
                "status",
                "statusReason",
                "authentication",
                "twinETag",
                "tags",
                "properties",
                "capabilities",
                "deviceScope",
                "parentScopes",
            ],
        ),
        (
            "AuthenticationMechanism",
            &["symmetricKey", "x509Thumbprint", "type"],
        ),
        ("SymmetricKey", &["primaryKey", "secondaryKey"]),
        (
            "X509Thumbprint",
            &["primaryThumbprint", "secondaryThumbprint"],
        ),
        ("DeviceCapabilities", &["iotEdge"]),
        ("TwinProperties", &["desired", "reported"]),
        ("PropertyContainer", &["desired", "reported"]),
        (
            "BulkRegistryOperationResult",
            &["isSuccessful", "errors", "warnings"],
        ),
        (
            "DeviceRegistryOperationError",
            &[
                "deviceId",
                "errorCode",
                "errorStatus",
                "moduleId",
                "operation",
            ],
        ),
        (
            "DeviceRegistryOperationWarning",
            &["deviceId", "warningCode", "warningStatus"],
        ),
        ("QuerySpecification", &["query"]),
    ];

    fn swagger_properties(definition: &str) -> Vec<String> {
        SWAGGER_PROPERTIES
            .iter()
            .find(|(name, _)| *name == definition)
            .unwrap_or_else(|| panic!("{definition} in the fixture"))
            .1
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    fn serialized_keys<T: Serialize>(value: &T) -> Vec<String> {
        let mut keys: Vec<String> = serde_json::to_value(value)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    fn full_device() -> Device {
        Device {
            device_id: Some("edge1".into()),
            generation_id: Some("637121074930370650".into()),
            etag: Some("Nzk1MjE0NjM2".into()),
            connection_state: Some(ConnectionState::Disconnected),
            status: Some(DeviceStatus::Enabled),
            status_reason: Some("r".into()),
            connection_state_updated_time: Some("0001-01-01T00:00:00".into()),
            status_updated_time: Some("0001-01-01T00:00:00".into()),
            last_activity_time: Some("0001-01-01T00:00:00".into()),
            cloud_to_device_message_count: Some(0),
            authentication: Some(AuthenticationMechanism::sas_generated()),
            capabilities: Some(DeviceCapabilities {
                iot_edge: Some(true),
            }),
            device_scope: Some("ms-azure-iot-edge://edge1-637121074930370650".into()),
            parent_scopes: Some(vec![]),
        }
    }

    /// A twin with every field set.
    fn full_twin() -> Twin {
        Twin {
            device_id: Some("d".into()),
            module_id: Some("m".into()),
            tags: Some(JsonObject::new()),
            properties: Some(TwinProperties {
                desired: Some(JsonObject::new()),
                reported: Some(JsonObject::new()),
            }),
            etag: Some("e".into()),
            version: Some(1),
            device_etag: Some("e".into()),
            status: Some(DeviceStatus::Enabled),
            status_reason: Some("r".into()),
            status_update_time: Some("t".into()),
            connection_state: Some(ConnectionState::Connected),
            last_activity_time: Some("t".into()),
            cloud_to_device_message_count: Some(0),
            authentication_type: Some(AuthenticationType::Sas),
            x509_thumbprint: Some(X509Thumbprint::default()),
            capabilities: Some(DeviceCapabilities::default()),
            device_scope: Some("s".into()),
            parent_scopes: Some(vec![]),
        }
    }

    /// An import entry with every field set.
    fn full_entry() -> ExportImportDevice {
        ExportImportDevice {
            id: Some("d".into()),
            module_id: Some("m".into()),
            e_tag: Some("e".into()),
            import_mode: Some(ImportMode::Create),
            status: Some(DeviceStatus::Enabled),
            status_reason: Some("r".into()),
            authentication: Some(AuthenticationMechanism::sas_generated()),
            twin_e_tag: Some("e".into()),
            tags: Some(JsonObject::new()),
            properties: Some(PropertyContainer {
                desired: Some(JsonObject::new()),
                reported: Some(JsonObject::new()),
            }),
            capabilities: Some(DeviceCapabilities::default()),
            device_scope: Some("s".into()),
            parent_scopes: Some(vec![]),
        }
    }

    #[test]
    fn every_model_field_has_the_swagger_name_and_no_other_is_sent() {
        let twin = full_twin();
        let module = Module {
            module_id: Some("m".into()),
            managed_by: Some("IotEdge".into()),
            device_id: Some("d".into()),
            generation_id: Some("g".into()),
            etag: Some("e".into()),
            connection_state: Some(ConnectionState::Connected),
            connection_state_updated_time: Some("t".into()),
            last_activity_time: Some("t".into()),
            cloud_to_device_message_count: Some(0),
            authentication: Some(AuthenticationMechanism::default()),
        };
        let metrics = ConfigurationMetrics {
            results: Some(BTreeMap::new()),
            queries: Some(BTreeMap::new()),
        };
        let content = ConfigurationContent {
            device_content: Some(JsonObject::new()),
            modules_content: Some(BTreeMap::new()),
            module_content: Some(JsonObject::new()),
        };
        let configuration = Configuration {
            id: Some("c".into()),
            schema_version: Some("1.0".into()),
            labels: Some(BTreeMap::new()),
            content: Some(content.clone()),
            target_condition: Some("tags.a='b'".into()),
            created_time_utc: Some("t".into()),
            last_updated_time_utc: Some("t".into()),
            priority: Some(1),
            system_metrics: Some(metrics.clone()),
            metrics: Some(metrics.clone()),
            etag: Some("MQ==".into()),
        };
        let entry = full_entry();
        let auth = AuthenticationMechanism {
            symmetric_key: Some(SymmetricKey {
                primary_key: Some("a".into()),
                secondary_key: Some("b".into()),
            }),
            x509_thumbprint: Some(X509Thumbprint {
                primary_thumbprint: Some("a".into()),
                secondary_thumbprint: Some("b".into()),
            }),
            auth_type: Some(AuthenticationType::SelfSigned),
        };
        let bulk = BulkRegistryOperationResult {
            is_successful: Some(false),
            errors: Some(vec![]),
            warnings: Some(vec![]),
        };
        let error = DeviceRegistryOperationError {
            device_id: Some("d".into()),
            error_code: Some("DeviceAlreadyExists".into()),
            error_status: Some("s".into()),
            module_id: Some("m".into()),
            operation: Some("o".into()),
        };
        let warning = DeviceRegistryOperationWarning {
            device_id: Some("d".into()),
            warning_code: Some("DeviceRegisteredWithoutTwin".into()),
            warning_status: Some("s".into()),
        };
        let cases: Vec<(&str, Vec<String>)> = vec![
            ("Device", serialized_keys(&full_device())),
            ("Twin", serialized_keys(&twin)),
            ("Module", serialized_keys(&module)),
            ("Configuration", serialized_keys(&configuration)),
            ("ConfigurationContent", serialized_keys(&content)),
            ("ConfigurationMetrics", serialized_keys(&metrics)),
            ("ExportImportDevice", serialized_keys(&entry)),
            ("AuthenticationMechanism", serialized_keys(&auth)),
            ("SymmetricKey", serialized_keys(&auth.symmetric_key)),
            ("X509Thumbprint", serialized_keys(&auth.x509_thumbprint)),
            (
                "DeviceCapabilities",
                serialized_keys(&DeviceCapabilities {
                    iot_edge: Some(true),
                }),
            ),
            ("TwinProperties", serialized_keys(&twin.properties)),
            ("PropertyContainer", serialized_keys(&entry.properties)),
            ("BulkRegistryOperationResult", serialized_keys(&bulk)),
            ("DeviceRegistryOperationError", serialized_keys(&error)),
            ("DeviceRegistryOperationWarning", serialized_keys(&warning)),
            (
                "QuerySpecification",
                serialized_keys(&QuerySpecification { query: "q".into() }),
            ),
        ];
        for (definition, keys) in cases {
            assert_eq!(keys, sorted(swagger_properties(definition)), "{definition}");
        }
    }

    /// Enum values as the swagger lists them (Device.status, Device.connectionState,
    /// AuthenticationMechanism.type, ExportImportDevice.importMode).
    #[test]
    fn enums_use_the_swagger_values() {
        assert_eq!(
            json!([DeviceStatus::Enabled, DeviceStatus::Disabled]),
            json!(["enabled", "disabled"])
        );
        assert_eq!(
            json!([ConnectionState::Disconnected, ConnectionState::Connected]),
            json!(["Disconnected", "Connected"])
        );
        assert_eq!(
            json!([
                AuthenticationType::Sas,
                AuthenticationType::SelfSigned,
                AuthenticationType::CertificateAuthority,
                AuthenticationType::None
            ]),
            json!(["sas", "selfSigned", "certificateAuthority", "none"])
        );
        assert_eq!(
            json!([
                ImportMode::Create,
                ImportMode::Update,
                ImportMode::UpdateIfMatchETag,
                ImportMode::Delete,
                ImportMode::DeleteIfMatchETag,
                ImportMode::UpdateTwin,
                ImportMode::UpdateTwinIfMatchETag
            ]),
            json!([
                "create",
                "update",
                "updateIfMatchETag",
                "delete",
                "deleteIfMatchETag",
                "updateTwin",
                "updateTwinIfMatchETag"
            ])
        );
    }

    #[test]
    fn unset_fields_are_not_sent() {
        let device = Device {
            device_id: Some("leaf1".into()),
            capabilities: Some(DeviceCapabilities {
                iot_edge: Some(false),
            }),
            device_scope: Some("ms-azure-iot-edge://edge1-1".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&device).unwrap(),
            json!({"deviceId": "leaf1", "capabilities": {"iotEdge": false},
                   "deviceScope": "ms-azure-iot-edge://edge1-1"})
        );
        let patch = Twin {
            tags: Some(
                json!({"edgeHierarchy": {"name": "h"}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!({"tags": {"edgeHierarchy": {"name": "h"}}})
        );
    }

    /// A device as Azure returns it (the shape Microsoft's AZ-220 lab prints), nulls
    /// included; reading and writing it back must keep every set value.
    #[test]
    fn reads_a_hub_device_and_writes_back_what_it_read() {
        let wire = json!({
            "deviceId": "vm-gw0002",
            "generationId": "637121074930370650",
            "etag": "Nzk1MjE0NjM2",
            "connectionState": "Disconnected",
            "status": "enabled",
            "statusReason": null,
            "connectionStateUpdatedTime": "0001-01-01T00:00:00",
            "statusUpdatedTime": "0001-01-01T00:00:00",
            "lastActivityTime": "0001-01-01T00:00:00",
            "cloudToDeviceMessageCount": 0,
            "authentication": {
                "symmetricKey": {"primaryKey": "cHJpbWFyeQ==", "secondaryKey": "c2Vjb25kYXJ5"},
                "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
                "type": "sas"
            },
            "capabilities": {"iotEdge": true},
            "deviceScope": "ms-azure-iot-edge://vm-gw0002-637121074930370650",
            "parentScopes": []
        });
        let device: Device = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(device.capabilities.unwrap().iot_edge, Some(true));
        let back = serde_json::to_value(&device).unwrap();
        let mut expected = wire;
        let obj = expected.as_object_mut().unwrap();
        obj.remove("statusReason");
        obj["authentication"]["x509Thumbprint"] = json!({});
        assert_eq!(back, expected);
    }

    #[test]
    fn reads_a_bulk_result_and_a_captured_configuration() {
        let bulk: BulkRegistryOperationResult = serde_json::from_value(json!({
            "isSuccessful": false,
            "errors": [{"deviceId": "d2", "errorCode": "DeviceAlreadyExists",
                        "errorStatus": "A device with ID 'd2' is already registered.",
                        "moduleId": null, "operation": null}],
            "warnings": []
        }))
        .unwrap();
        assert_eq!(
            bulk.errors.unwrap()[0].error_code.as_deref(),
            Some("DeviceAlreadyExists")
        );

        let configuration: Configuration = serde_json::from_value(json!({
            "id": "aaas-rpi-premium", "schemaVersion": null, "labels": {},
            "content": {"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1"}},
                        "$edgeHub": {"properties.desired.routes.r1": "FROM /messages/* INTO $upstream"}}},
            "targetCondition": "tags.service ='premium'",
            "createdTimeUtc": "2019-11-20T12:00:00.000Z", "lastUpdatedTimeUtc": "2019-11-20T12:00:00.000Z",
            "priority": 10,
            "systemMetrics": {"results": {"appliedCount": 1, "targetedCount": 1},
                              "queries": {"Targeted": "select deviceId from devices"}},
            "metrics": {"results": {}, "queries": {}},
            "etag": "MQ=="
        }))
        .unwrap();
        assert_eq!(configuration.priority, Some(10));
        let modules = configuration.content.unwrap().modules_content.unwrap();
        assert!(modules["$edgeHub"].contains_key("properties.desired.routes.r1"));
    }

    #[test]
    fn debug_never_prints_keys_or_property_values() {
        let device = Device {
            authentication: Some(AuthenticationMechanism {
                symmetric_key: Some(SymmetricKey {
                    primary_key: Some("UFJJTUFSWQ==".into()),
                    secondary_key: Some(String::new()),
                }),
                ..Default::default()
            }),
            ..full_device()
        };
        let shown = format!("{device:?}");
        assert!(!shown.contains("UFJJTUFSWQ=="), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("<empty>"));

        let content: ConfigurationContent = serde_json::from_value(json!({
            "modulesContent": {"$edgeAgent": {"properties.desired": {"runtime": {"settings":
                {"registryCredentials": {"acr": {"password": "hunter2-secret"}}}}}}}
        }))
        .unwrap();
        let twin = Twin {
            properties: Some(TwinProperties {
                desired: content.modules_content.clone().unwrap()["$edgeAgent"]
                    .clone()
                    .into(),
                reported: None,
            }),
            ..Default::default()
        };
        for shown in [format!("{content:?}"), format!("{twin:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert!(format!("{content:?}").contains("$edgeAgent"));
    }
}
