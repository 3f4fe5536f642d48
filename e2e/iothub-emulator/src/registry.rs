//! Identity registry model: devices, modules and their authentication, parsed from request bodies
//! and rendered as the service renders them.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use crate::auth::generate_key;
use crate::clock::{NEVER, format_timestamp};
use crate::error::HubError;
use crate::twin::TwinState;

/// Prefix of an edge device's scope.
pub const EDGE_SCOPE_PREFIX: &str = "ms-azure-iot-edge://";
/// The system modules every edge device has.
pub const SYSTEM_MODULES: [&str; 2] = ["$edgeAgent", "$edgeHub"];

/// How a device or module authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Symmetric keys (base64).
    Sas { primary: String, secondary: String },
    /// Self-signed X.509 certificates, identified by thumbprint.
    SelfSigned {
        primary: String,
        secondary: Option<String>,
    },
    /// Certificates signed by a CA registered with the hub.
    CertificateAuthority,
    /// No credentials of its own.
    None,
}

impl std::fmt::Debug for Authentication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authentication::Sas { .. } => f.write_str("Sas(<keys redacted>)"),
            Authentication::SelfSigned { primary, secondary } => f
                .debug_struct("SelfSigned")
                .field("primary", primary)
                .field("secondary", secondary)
                .finish(),
            Authentication::CertificateAuthority => f.write_str("CertificateAuthority"),
            Authentication::None => f.write_str("None"),
        }
    }
}

impl Authentication {
    /// New symmetric keys.
    pub fn generated_sas() -> Self {
        Authentication::Sas {
            primary: generate_key(),
            secondary: generate_key(),
        }
    }

    /// The `type` value.
    pub fn type_name(&self) -> &'static str {
        match self {
            Authentication::Sas { .. } => "sas",
            Authentication::SelfSigned { .. } => "selfSigned",
            Authentication::CertificateAuthority => "certificateAuthority",
            Authentication::None => "none",
        }
    }

    /// The keys, if the identity uses them.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Authentication::Sas { primary, secondary } => vec![primary, secondary],
            _ => vec![],
        }
    }

    /// Whether a certificate with these thumbprints (upper hex) is registered.
    pub fn accepts_thumbprint(&self, thumbprints: &[String]) -> bool {
        match self {
            Authentication::SelfSigned { primary, secondary } => thumbprints.iter().any(|t| {
                t.eq_ignore_ascii_case(primary)
                    || secondary
                        .as_deref()
                        .is_some_and(|s| t.eq_ignore_ascii_case(s))
            }),
            _ => false,
        }
    }

    /// `x509Thumbprint` as rendered.
    pub fn render_thumbprints(&self) -> Value {
        match self {
            Authentication::SelfSigned { primary, secondary } => {
                json!({"primaryThumbprint": primary, "secondaryThumbprint": secondary})
            }
            _ => json!({"primaryThumbprint": null, "secondaryThumbprint": null}),
        }
    }

    /// `authentication` as rendered.
    pub fn render(&self) -> Value {
        let keys = match self {
            Authentication::Sas { primary, secondary } => {
                json!({"primaryKey": primary, "secondaryKey": secondary})
            }
            _ => json!({"primaryKey": null, "secondaryKey": null}),
        };
        json!({"symmetricKey": keys, "x509Thumbprint": self.render_thumbprints(), "type": self.type_name()})
    }
}

/// A module identity with its twin.
#[derive(Debug, Clone)]
pub struct Module {
    pub id: String,
    pub generation_id: String,
    pub etag_number: u64,
    pub managed_by: Option<String>,
    pub authentication: Authentication,
    pub twin: TwinState,
    pub last_activity_ms: Option<i64>,
}

/// A device identity with its twin and modules.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub generation_id: String,
    pub etag_number: u64,
    pub enabled: bool,
    pub status_reason: Option<String>,
    pub status_updated_ms: Option<i64>,
    pub authentication: Authentication,
    pub iot_edge: bool,
    pub device_scope: Option<String>,
    pub parent_scopes: Vec<String>,
    pub last_activity_ms: Option<i64>,
    pub twin: TwinState,
    pub modules: BTreeMap<String, Module>,
    /// Set when content was applied with applyConfigurationContent (per-device deployment).
    pub per_device_content: bool,
    /// Desired properties per module from the deployment in force, kept so that a module
    /// identity created later (by the edge runtime) gets them.
    pub deployed_desired: BTreeMap<String, Map<String, Value>>,
}

/// Base64 of a decimal counter, the shape of identity etags (`Nzk1MjE0NjM2`).
pub fn identity_etag(number: u64) -> String {
    BASE64.encode(number.to_string())
}

/// Renders an optional time as the service does.
fn time(ms: Option<i64>) -> String {
    ms.map(format_timestamp)
        .unwrap_or_else(|| NEVER.to_string())
}

impl Device {
    /// The identity etag.
    pub fn etag(&self) -> String {
        identity_etag(self.etag_number)
    }

    /// `enabled` or `disabled`.
    pub fn status(&self) -> &'static str {
        if self.enabled { "enabled" } else { "disabled" }
    }

    /// The Device JSON of the registry API.
    pub fn render(&self) -> Value {
        let mut out = json!({
            "deviceId": self.id,
            "generationId": self.generation_id,
            "etag": self.etag(),
            "connectionState": "Disconnected",
            "status": self.status(),
            "statusReason": self.status_reason,
            "connectionStateUpdatedTime": NEVER,
            "statusUpdatedTime": time(self.status_updated_ms),
            "lastActivityTime": time(self.last_activity_ms),
            "cloudToDeviceMessageCount": 0,
            "authentication": self.authentication.render(),
            "capabilities": {"iotEdge": self.iot_edge},
            "parentScopes": self.parent_scopes,
        });
        if let Some(scope) = &self.device_scope {
            out["deviceScope"] = scope.clone().into();
        }
        out
    }

    /// The device twin JSON.
    pub fn render_twin(&self) -> Value {
        let mut out = json!({
            "deviceId": self.id,
            "etag": self.twin.etag(),
            "deviceEtag": self.etag(),
            "status": self.status(),
            "statusReason": self.status_reason,
            "statusUpdateTime": time(self.status_updated_ms),
            "connectionState": "Disconnected",
            "lastActivityTime": time(self.last_activity_ms),
            "cloudToDeviceMessageCount": 0,
            "authenticationType": self.authentication.type_name(),
            "x509Thumbprint": self.authentication.render_thumbprints(),
            "modelId": "",
            "version": self.twin.version,
            "tags": self.twin.tags,
            "properties": self.twin.render_properties(),
            "capabilities": {"iotEdge": self.iot_edge},
            "parentScopes": self.parent_scopes,
        });
        if let Some(scope) = &self.device_scope {
            out["deviceScope"] = scope.clone().into();
        }
        if let Some(configurations) = self.twin.render_configurations() {
            out["configurations"] = configurations;
        }
        out
    }

    /// The Module JSON of one of this device's modules.
    pub fn render_module(&self, module: &Module) -> Value {
        json!({
            "moduleId": module.id,
            "managedBy": module.managed_by,
            "deviceId": self.id,
            "generationId": module.generation_id,
            "etag": identity_etag(module.etag_number),
            "connectionState": "Disconnected",
            "connectionStateUpdatedTime": NEVER,
            "lastActivityTime": time(module.last_activity_ms),
            "cloudToDeviceMessageCount": 0,
            "authentication": module.authentication.render(),
        })
    }

    /// The module twin JSON.
    pub fn render_module_twin(&self, module: &Module) -> Value {
        let mut out = json!({
            "deviceId": self.id,
            "moduleId": module.id,
            "etag": module.twin.etag(),
            "deviceEtag": identity_etag(module.etag_number),
            "status": "enabled",
            "statusUpdateTime": NEVER,
            "connectionState": "Disconnected",
            "lastActivityTime": time(module.last_activity_ms),
            "cloudToDeviceMessageCount": 0,
            "authenticationType": module.authentication.type_name(),
            "x509Thumbprint": module.authentication.render_thumbprints(),
            "modelId": "",
            "version": module.twin.version,
            "tags": module.twin.tags,
            "properties": module.twin.render_properties(),
        });
        if let Some(configurations) = module.twin.render_configurations() {
            out["configurations"] = configurations;
        }
        out
    }
}

/// Checks a device or module id against IoT Hub's rules (case-sensitive, at most 128 ASCII
/// characters from a fixed set).
pub fn validate_id(kind: &str, id: &str) -> Result<(), HubError> {
    const EXTRA: &str = "-.+%_#*?!(),=@$':";
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || EXTRA.contains(c));
    if ok {
        Ok(())
    } else {
        Err(HubError::bad_request(format!(
            "{kind} id '{}' is invalid: use 1-128 characters from A-Z a-z 0-9 and {EXTRA}",
            id.escape_default()
        )))
    }
}

/// The fields of a Device (or ExportImportDevice) body the registry uses.
#[derive(Debug, Clone, Default)]
pub struct DeviceInput {
    pub device_id: Option<String>,
    pub enabled: Option<bool>,
    pub status_reason: Option<String>,
    pub authentication: Option<Authentication>,
    pub iot_edge: Option<bool>,
    pub device_scope: Option<String>,
    pub parent_scopes: Option<Vec<String>>,
}

/// Reads typed fields of a JSON object, naming the field in errors.
pub struct Fields<'a> {
    object: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    /// Wraps a value that must be an object.
    pub fn of(value: &'a Value, path: &str) -> Result<Self, HubError> {
        match value {
            Value::Object(object) => Ok(Self {
                object,
                path: path.to_string(),
            }),
            _ => Err(HubError::bad_request(format!(
                "{path} must be a JSON object"
            ))),
        }
    }

    fn field(&self, name: &str) -> Option<&'a Value> {
        self.object.get(name).filter(|v| !v.is_null())
    }

    fn ill_typed(&self, name: &str, expected: &str) -> HubError {
        HubError::bad_request(format!("field {}.{name} must be {expected}", self.path))
    }

    /// An optional string.
    pub fn string(&self, name: &str) -> Result<Option<String>, HubError> {
        match self.field(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.ill_typed(name, "a string")),
        }
    }

    /// An optional boolean.
    pub fn boolean(&self, name: &str) -> Result<Option<bool>, HubError> {
        match self.field(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.ill_typed(name, "true or false")),
        }
    }

    /// An optional integer.
    pub fn integer(&self, name: &str) -> Result<Option<i64>, HubError> {
        match self.field(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.ill_typed(name, "an integer")),
        }
    }

    /// An optional object.
    pub fn object(&self, name: &str) -> Result<Option<&'a Map<String, Value>>, HubError> {
        match self.field(name) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(self.ill_typed(name, "a JSON object")),
        }
    }

    /// An optional nested object as `Fields`.
    pub fn nested(&self, name: &str) -> Result<Option<Fields<'a>>, HubError> {
        Ok(self.object(name)?.map(|object| Fields {
            object,
            path: format!("{}.{name}", self.path),
        }))
    }

    /// An optional array of strings.
    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>, HubError> {
        match self.field(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.ill_typed(name, "an array of strings")),
            Some(_) => Err(self.ill_typed(name, "an array of strings")),
        }
    }

    /// An optional string restricted to some values.
    pub fn one_of(&self, name: &str, allowed: &[&str]) -> Result<Option<String>, HubError> {
        let value = self.string(name)?;
        if let Some(v) = &value
            && !allowed.contains(&v.as_str())
        {
            return Err(self.ill_typed(name, &format!("one of {}", allowed.join(", "))));
        }
        Ok(value)
    }
}

fn is_thumbprint(text: &str) -> bool {
    (text.len() == 40 || text.len() == 64) && text.chars().all(|c| c.is_ascii_hexdigit())
}

fn check_key(path: &str, key: &str) -> Result<(), HubError> {
    match BASE64.decode(key) {
        Ok(bytes) if (16..=64).contains(&bytes.len()) => Ok(()),
        _ => Err(HubError::bad_request(format!(
            "{path} must be base64 of 16 to 64 bytes; leave it empty to have the hub generate one"
        ))),
    }
}

/// Parses an `authentication` object. Empty keys are generated, as the hub does; on an update
/// (`current` given) an empty key keeps the current one.
pub fn parse_authentication(
    fields: &Fields<'_>,
    current: Option<&Authentication>,
) -> Result<Authentication, HubError> {
    let kind = fields
        .one_of(
            "type",
            &["sas", "selfSigned", "certificateAuthority", "none"],
        )?
        .unwrap_or_else(|| "sas".into());
    match kind.as_str() {
        "sas" => {
            let keys = fields.nested("symmetricKey")?;
            let read = |name: &str| -> Result<Option<String>, HubError> {
                match &keys {
                    Some(k) => Ok(k.string(name)?.filter(|s| !s.is_empty())),
                    None => Ok(None),
                }
            };
            let primary = read("primaryKey")?;
            let secondary = read("secondaryKey")?;
            for (name, key) in [("primaryKey", &primary), ("secondaryKey", &secondary)] {
                if let Some(key) = key {
                    check_key(&format!("{}.symmetricKey.{name}", fields.path), key)?;
                }
            }
            let (current_primary, current_secondary) = match current {
                Some(Authentication::Sas { primary, secondary }) => {
                    (Some(primary.clone()), Some(secondary.clone()))
                }
                _ => (None, None),
            };
            Ok(Authentication::Sas {
                primary: primary.or(current_primary).unwrap_or_else(generate_key),
                secondary: secondary.or(current_secondary).unwrap_or_else(generate_key),
            })
        }
        "selfSigned" => {
            let prints = fields.nested("x509Thumbprint")?.ok_or_else(|| {
                HubError::bad_request(format!(
                    "{}.x509Thumbprint is required for selfSigned authentication",
                    fields.path
                ))
            })?;
            let primary = prints
                .string("primaryThumbprint")?
                .filter(|s| !s.is_empty());
            let secondary = prints
                .string("secondaryThumbprint")?
                .filter(|s| !s.is_empty());
            let primary = primary.ok_or_else(|| {
                HubError::bad_request(format!(
                    "{}.x509Thumbprint.primaryThumbprint is required for selfSigned authentication",
                    fields.path
                ))
            })?;
            for print in std::iter::once(&primary).chain(secondary.as_ref()) {
                if !is_thumbprint(print) {
                    return Err(HubError::bad_request(format!(
                        "thumbprint '{print}' in {}.x509Thumbprint must be 40 (SHA-1) or 64 (SHA-256) hex digits",
                        fields.path
                    )));
                }
            }
            Ok(Authentication::SelfSigned { primary, secondary })
        }
        "certificateAuthority" => Ok(Authentication::CertificateAuthority),
        _ => Ok(Authentication::None),
    }
}

/// Parses the registry fields of a Device or ExportImportDevice body. `id_field` is
/// `deviceId` for Device and `id` for ExportImportDevice; `current` is the registered
/// authentication on an update.
pub fn parse_device_input(
    body: &Value,
    path: &str,
    id_field: &str,
    current: Option<&Authentication>,
) -> Result<DeviceInput, HubError> {
    let fields = Fields::of(body, path)?;
    let authentication = match fields.nested("authentication")? {
        Some(auth) => Some(parse_authentication(&auth, current)?),
        None => None,
    };
    let iot_edge = match fields.nested("capabilities")? {
        Some(caps) => caps.boolean("iotEdge")?,
        None => None,
    };
    Ok(DeviceInput {
        device_id: fields.string(id_field)?,
        enabled: fields
            .one_of("status", &["enabled", "disabled"])?
            .map(|s| s == "enabled"),
        status_reason: fields.string("statusReason")?,
        authentication,
        iot_edge,
        device_scope: fields.string("deviceScope")?,
        parent_scopes: fields.strings("parentScopes")?,
    })
}

/// Renders the BulkRegistryOperationResult of a bulk call.
pub fn render_bulk_result(errors: &[Value], warnings: &[Value]) -> Value {
    json!({"isSuccessful": errors.is_empty(), "errors": errors, "warnings": warnings})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_registry_rules() {
        for ok in [
            "edge1",
            "a-b.c+d%e_f#g*h?i!j(k)l,m=n@o$p'q:r",
            &"x".repeat(128),
        ] {
            assert!(validate_id("device", ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "slash/no", "ümlaut", &"x".repeat(129)] {
            assert!(validate_id("device", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_keys_are_generated() {
        let body = json!({"deviceId": "d", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": null}}});
        let input = parse_device_input(&body, "Device", "deviceId", None).unwrap();
        let Some(Authentication::Sas { primary, secondary }) = input.authentication else {
            panic!("expected sas");
        };
        assert_eq!(BASE64.decode(&primary).unwrap().len(), 32);
        assert_ne!(primary, secondary);
    }

    #[test]
    fn bad_keys_and_thumbprints_are_refused() {
        let short = json!({"authentication": {"symmetricKey": {"primaryKey": "AAAA"}}});
        let err = parse_device_input(&short, "Device", "deviceId", None).unwrap_err();
        assert!(err.message.contains("primaryKey"), "{}", err.message);
        let no_print = json!({"authentication": {"type": "selfSigned", "x509Thumbprint": {}}});
        assert!(parse_device_input(&no_print, "Device", "deviceId", None).is_err());
        let bad_print = json!({"authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "XYZ"}}});
        assert!(parse_device_input(&bad_print, "Device", "deviceId", None).is_err());
        let good = json!({"authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "a".repeat(64)}}});
        let auth = parse_device_input(&good, "Device", "deviceId", None)
            .unwrap()
            .authentication
            .unwrap();
        assert!(auth.accepts_thumbprint(&["A".repeat(64)]));
        assert!(!auth.accepts_thumbprint(&["B".repeat(64)]));
    }

    #[test]
    fn ill_typed_fields_name_the_field() {
        let body = json!({"capabilities": {"iotEdge": "yes"}});
        let err = parse_device_input(&body, "Device", "deviceId", None).unwrap_err();
        assert_eq!(
            err.message,
            "field Device.capabilities.iotEdge must be true or false"
        );
        let status = json!({"status": "on"});
        assert!(parse_device_input(&status, "Device", "deviceId", None).is_err());
    }

    #[test]
    fn debug_hides_keys() {
        let auth = Authentication::generated_sas();
        let Authentication::Sas { primary, .. } = &auth else {
            unreachable!()
        };
        assert!(!format!("{auth:?}").contains(primary.as_str()));
    }

    #[test]
    fn identity_etags_are_base64_decimals() {
        assert_eq!(identity_etag(795214636), "Nzk1MjE0NjM2");
    }
}
