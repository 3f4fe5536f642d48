//! IoT Hub error codes and the error bodies the service answers with.
//!
//! Registry and configuration errors use the `ErrorCode:<Name>;<text>` body (the one every SDK
//! parses) plus the `iothub-errorcode` header; authentication errors use the newer numeric body
//! Azure sends for 401s.

use serde_json::json;

/// An IoT Hub error code: its name (as in the `iothub-errorcode` header) and its six-digit number,
/// whose first three digits are the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    GenericBadRequest,
    InvalidProtocolVersion,
    InvalidOperation,
    ArgumentInvalid,
    ArgumentNull,
    IotHubFormatError,
    DeviceDefinedMultipleTimes,
    BulkRegistryOperationFailure,
    EtagDoesNotMatch,
    InvalidDeviceScope,
    InvalidConfigurationTargetCondition,
    InvalidConfigurationContent,
    CannotModifyImmutableConfigurationContent,
    InvalidConfigurationCustomMetricsQuery,
    IotHubUnauthorizedAccess,
    IotHubUnauthorized,
    SystemModuleModifyUnauthorizedAccess,
    IotHubQuotaExceeded,
    GenericNotFound,
    DeviceNotFound,
    ModuleNotFound,
    ConfigurationNotFound,
    GenericMethodNotAllowed,
    DeviceAlreadyExists,
    ModuleAlreadyExistsOnDevice,
    ConfigurationAlreadyExists,
    PreconditionFailed,
    TooManyDevices,
    TooManyModulesOnDevice,
    ConfigurationCountLimitExceeded,
    ThrottlingException,
    ServerError,
    ServiceUnavailable,
}

impl ErrorCode {
    /// The code's name, e.g. `DeviceNotFound`.
    pub fn name(self) -> &'static str {
        self.parts().0
    }

    /// The numeric code, e.g. `404001`.
    pub fn number(self) -> u32 {
        self.parts().1
    }

    /// The HTTP status: the first three digits of the number.
    pub fn status(self) -> u16 {
        u16::try_from(self.number() / 1000).unwrap_or(500)
    }

    fn parts(self) -> (&'static str, u32) {
        use ErrorCode::*;
        match self {
            GenericBadRequest => ("GenericBadRequest", 400000),
            InvalidProtocolVersion => ("InvalidProtocolVersion", 400001),
            InvalidOperation => ("InvalidOperation", 400003),
            ArgumentInvalid => ("ArgumentInvalid", 400004),
            ArgumentNull => ("ArgumentNull", 400005),
            IotHubFormatError => ("IotHubFormatError", 400006),
            DeviceDefinedMultipleTimes => ("DeviceDefinedMultipleTimes", 400011),
            BulkRegistryOperationFailure => ("BulkRegistryOperationFailure", 400013),
            EtagDoesNotMatch => ("EtagDoesNotMatch", 400023),
            InvalidDeviceScope => ("InvalidDeviceScope", 400028),
            InvalidConfigurationTargetCondition => ("InvalidConfigurationTargetCondition", 400401),
            InvalidConfigurationContent => ("InvalidConfigurationContent", 400402),
            CannotModifyImmutableConfigurationContent => {
                ("CannotModifyImmutableConfigurationContent", 400403)
            }
            InvalidConfigurationCustomMetricsQuery => {
                ("InvalidConfigurationCustomMetricsQuery", 400404)
            }
            IotHubUnauthorizedAccess => ("IotHubUnauthorizedAccess", 401002),
            IotHubUnauthorized => ("IotHubUnauthorized", 401003),
            SystemModuleModifyUnauthorizedAccess => {
                ("SystemModuleModifyUnauthorizedAccess", 401100)
            }
            IotHubQuotaExceeded => ("IotHubQuotaExceeded", 403002),
            GenericNotFound => ("GenericNotFound", 404000),
            DeviceNotFound => ("DeviceNotFound", 404001),
            ModuleNotFound => ("ModuleNotFound", 404010),
            ConfigurationNotFound => ("ConfigurationNotFound", 404301),
            GenericMethodNotAllowed => ("GenericMethodNotAllowed", 405000),
            DeviceAlreadyExists => ("DeviceAlreadyExists", 409001),
            ModuleAlreadyExistsOnDevice => ("ModuleAlreadyExistsOnDevice", 409301),
            ConfigurationAlreadyExists => ("ConfigurationAlreadyExists", 409401),
            PreconditionFailed => ("PreconditionFailed", 412001),
            TooManyDevices => ("TooManyDevices", 413002),
            TooManyModulesOnDevice => ("TooManyModulesOnDevice", 413003),
            ConfigurationCountLimitExceeded => ("ConfigurationCountLimitExceeded", 413101),
            ThrottlingException => ("ThrottlingException", 429001),
            ServerError => ("ServerError", 500001),
            ServiceUnavailable => ("ServiceUnavailable", 503001),
        }
    }
}

/// An error answer of the hub: a code and a message that names the object and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct HubError {
    /// The IoT Hub error code.
    pub code: ErrorCode,
    /// Human-readable text (never contains keys or tokens).
    pub message: String,
    /// Seconds the client should wait (429 only).
    pub retry_after_secs: Option<u64>,
}

impl HubError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// HTTP status of this error.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The JSON body IoT Hub sends for this error. `tracking_id` and `time` fill the
    /// `ExceptionMessage` the way Azure does.
    pub fn body(
        &self,
        tracking_id: &str,
        time_utc: &str,
        tracking_time: &str,
    ) -> serde_json::Value {
        if self.code.status() == 401 {
            // Azure's 401s carry the numeric JSON form inside `Message`.
            let inner = json!({
                "errorCode": self.code.number(),
                "trackingId": tracking_id,
                "message": self.message,
                "timestampUtc": time_utc,
            });
            json!({"Message": inner.to_string(), "ExceptionMessage": ""})
        } else {
            json!({
                "Message": format!("ErrorCode:{};{}", self.code.name(), self.message),
                "ExceptionMessage": format!("Tracking ID:{tracking_id}-G:0-TimeStamp:{tracking_time}"),
            })
        }
    }
}

/// Shorthand constructors for the errors the handlers raise most.
impl HubError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ArgumentInvalid, message)
    }

    pub(crate) fn device_not_found(device_id: &str) -> Self {
        Self::new(
            ErrorCode::DeviceNotFound,
            format!("Device {device_id} not registered"),
        )
    }

    pub(crate) fn module_not_found(device_id: &str, module_id: &str) -> Self {
        Self::new(
            ErrorCode::ModuleNotFound,
            format!("Module {module_id} on device {device_id} not registered"),
        )
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::IotHubUnauthorizedAccess, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_the_first_three_digits() {
        assert_eq!(ErrorCode::DeviceNotFound.status(), 404);
        assert_eq!(ErrorCode::PreconditionFailed.status(), 412);
        assert_eq!(ErrorCode::ThrottlingException.status(), 429);
        assert_eq!(ErrorCode::InvalidDeviceScope.number(), 400028);
        assert_eq!(ErrorCode::ServiceUnavailable.status(), 503);
        assert_eq!(ErrorCode::IotHubQuotaExceeded.status(), 403);
        assert_eq!(ErrorCode::IotHubQuotaExceeded.number(), 403002);
    }

    #[test]
    fn registry_errors_use_the_error_code_prefix_form() {
        let body = HubError::device_not_found("edge1").body("abc", "t", "01/02/2024 03:04:05");
        assert_eq!(
            body["Message"],
            "ErrorCode:DeviceNotFound;Device edge1 not registered"
        );
        assert_eq!(
            body["ExceptionMessage"],
            "Tracking ID:abc-G:0-TimeStamp:01/02/2024 03:04:05"
        );
    }

    #[test]
    fn unauthorized_errors_use_the_numeric_form() {
        let body = HubError::unauthorized("Unauthorized").body("abc", "2024-01-01T00:00:00Z", "x");
        let inner: serde_json::Value =
            serde_json::from_str(body["Message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["errorCode"], 401002);
        assert_eq!(inner["trackingId"], "abc");
        assert_eq!(body["ExceptionMessage"], "");
    }
}
