//! `--strict` request-body checks against the request models of the 2021-04-12 swagger, so a
//! client that drifts from the real API (an unknown or ill-typed field) is told at once.
//!
//! Swagger properties typed `object` with no schema (twin properties, tags, content values) are
//! free-form JSON, as the SDKs treat them. `null` is accepted anywhere: it means "absent".

use serde_json::Value;

/// A swagger type.
#[derive(Debug)]
pub enum Ty {
    /// Any string.
    Str,
    /// A string from a fixed set.
    Enum(&'static [&'static str]),
    /// An integer that fits in 32 bits.
    Int32,
    /// An integer that fits in 64 bits.
    Int64,
    /// true or false.
    Bool,
    /// Free-form JSON.
    Any,
    /// A model with named properties.
    Model(&'static Model),
    /// An object with free keys whose values have this type.
    MapOf(&'static Ty),
    /// An array.
    ArrayOf(&'static Ty),
}

/// A swagger model: its name and its properties.
#[derive(Debug)]
pub struct Model {
    pub name: &'static str,
    pub fields: &'static [(&'static str, Ty)],
}

const STATUS: Ty = Ty::Enum(&["enabled", "disabled"]);
const CONNECTION_STATE: Ty = Ty::Enum(&["Disconnected", "Connected"]);
const AUTH_TYPE: Ty = Ty::Enum(&["sas", "selfSigned", "certificateAuthority", "none"]);
const STRINGS: Ty = Ty::ArrayOf(&Ty::Str);
const FREE_MAP: Ty = Ty::MapOf(&Ty::Any);

pub static SYMMETRIC_KEY: Model = Model {
    name: "SymmetricKey",
    fields: &[("primaryKey", Ty::Str), ("secondaryKey", Ty::Str)],
};

pub static X509_THUMBPRINT: Model = Model {
    name: "X509Thumbprint",
    fields: &[
        ("primaryThumbprint", Ty::Str),
        ("secondaryThumbprint", Ty::Str),
    ],
};

pub static AUTHENTICATION_MECHANISM: Model = Model {
    name: "AuthenticationMechanism",
    fields: &[
        ("symmetricKey", Ty::Model(&SYMMETRIC_KEY)),
        ("x509Thumbprint", Ty::Model(&X509_THUMBPRINT)),
        ("type", AUTH_TYPE),
    ],
};

pub static DEVICE_CAPABILITIES: Model = Model {
    name: "DeviceCapabilities",
    fields: &[("iotEdge", Ty::Bool)],
};

pub static DEVICE: Model = Model {
    name: "Device",
    fields: &[
        ("deviceId", Ty::Str),
        ("generationId", Ty::Str),
        ("etag", Ty::Str),
        ("connectionState", CONNECTION_STATE),
        ("status", STATUS),
        ("statusReason", Ty::Str),
        ("connectionStateUpdatedTime", Ty::Str),
        ("statusUpdatedTime", Ty::Str),
        ("lastActivityTime", Ty::Str),
        ("cloudToDeviceMessageCount", Ty::Int32),
        ("authentication", Ty::Model(&AUTHENTICATION_MECHANISM)),
        ("capabilities", Ty::Model(&DEVICE_CAPABILITIES)),
        ("deviceScope", Ty::Str),
        ("parentScopes", STRINGS),
    ],
};

pub static MODULE: Model = Model {
    name: "Module",
    fields: &[
        ("moduleId", Ty::Str),
        ("managedBy", Ty::Str),
        ("deviceId", Ty::Str),
        ("generationId", Ty::Str),
        ("etag", Ty::Str),
        ("connectionState", CONNECTION_STATE),
        ("connectionStateUpdatedTime", Ty::Str),
        ("lastActivityTime", Ty::Str),
        ("cloudToDeviceMessageCount", Ty::Int32),
        ("authentication", Ty::Model(&AUTHENTICATION_MECHANISM)),
    ],
};

pub static PROPERTY_CONTAINER: Model = Model {
    name: "PropertyContainer",
    fields: &[("desired", FREE_MAP), ("reported", FREE_MAP)],
};

pub static EXPORT_IMPORT_DEVICE: Model = Model {
    name: "ExportImportDevice",
    fields: &[
        ("id", Ty::Str),
        ("moduleId", Ty::Str),
        ("eTag", Ty::Str),
        (
            "importMode",
            Ty::Enum(&[
                "create",
                "update",
                "updateIfMatchETag",
                "delete",
                "deleteIfMatchETag",
                "updateTwin",
                "updateTwinIfMatchETag",
            ]),
        ),
        ("status", STATUS),
        ("statusReason", Ty::Str),
        ("authentication", Ty::Model(&AUTHENTICATION_MECHANISM)),
        ("twinETag", Ty::Str),
        ("tags", FREE_MAP),
        ("properties", Ty::Model(&PROPERTY_CONTAINER)),
        ("capabilities", Ty::Model(&DEVICE_CAPABILITIES)),
        ("deviceScope", Ty::Str),
        ("parentScopes", STRINGS),
    ],
};

pub static TWIN_PROPERTIES: Model = Model {
    name: "TwinProperties",
    fields: &[("desired", FREE_MAP), ("reported", FREE_MAP)],
};

pub static TWIN: Model = Model {
    name: "Twin",
    fields: &[
        ("deviceId", Ty::Str),
        ("moduleId", Ty::Str),
        ("tags", FREE_MAP),
        ("properties", Ty::Model(&TWIN_PROPERTIES)),
        ("etag", Ty::Str),
        ("version", Ty::Int64),
        ("deviceEtag", Ty::Str),
        ("status", STATUS),
        ("statusReason", Ty::Str),
        ("statusUpdateTime", Ty::Str),
        ("connectionState", CONNECTION_STATE),
        ("lastActivityTime", Ty::Str),
        ("cloudToDeviceMessageCount", Ty::Int32),
        ("authenticationType", AUTH_TYPE),
        ("x509Thumbprint", Ty::Model(&X509_THUMBPRINT)),
        ("capabilities", Ty::Model(&DEVICE_CAPABILITIES)),
        ("deviceScope", Ty::Str),
        ("parentScopes", STRINGS),
    ],
};

pub static CONFIGURATION_CONTENT: Model = Model {
    name: "ConfigurationContent",
    fields: &[
        ("deviceContent", FREE_MAP),
        ("modulesContent", Ty::MapOf(&FREE_MAP)),
        ("moduleContent", FREE_MAP),
    ],
};

pub static CONFIGURATION_METRICS: Model = Model {
    name: "ConfigurationMetrics",
    fields: &[
        ("results", Ty::MapOf(&Ty::Int64)),
        ("queries", Ty::MapOf(&Ty::Str)),
    ],
};

pub static CONFIGURATION: Model = Model {
    name: "Configuration",
    fields: &[
        ("id", Ty::Str),
        ("schemaVersion", Ty::Str),
        ("labels", Ty::MapOf(&Ty::Str)),
        ("content", Ty::Model(&CONFIGURATION_CONTENT)),
        ("targetCondition", Ty::Str),
        ("createdTimeUtc", Ty::Str),
        ("lastUpdatedTimeUtc", Ty::Str),
        ("priority", Ty::Int32),
        ("systemMetrics", Ty::Model(&CONFIGURATION_METRICS)),
        ("metrics", Ty::Model(&CONFIGURATION_METRICS)),
        ("etag", Ty::Str),
    ],
};

pub static CONFIGURATION_QUERIES_TEST_INPUT: Model = Model {
    name: "ConfigurationQueriesTestInput",
    fields: &[
        ("targetCondition", Ty::Str),
        ("customMetricQueries", Ty::MapOf(&Ty::Str)),
    ],
};

pub static QUERY_SPECIFICATION: Model = Model {
    name: "QuerySpecification",
    fields: &[("query", Ty::Str)],
};

/// The body of a bulk registry call.
pub const BULK_BODY: Ty = Ty::ArrayOf(&Ty::Model(&EXPORT_IMPORT_DEVICE));

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a value against a type. The error names the JSON path, what was found and what the
/// swagger expects.
pub fn validate(value: &Value, ty: &Ty, path: &str) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    let mismatch = |expected: &str| {
        Err(format!(
            "{path} is {} but the 2021-04-12 swagger expects {expected}",
            kind(value)
        ))
    };
    match ty {
        Ty::Any => Ok(()),
        Ty::Str => match value {
            Value::String(_) => Ok(()),
            _ => mismatch("a string"),
        },
        Ty::Enum(allowed) => match value {
            Value::String(s) if allowed.contains(&s.as_str()) => Ok(()),
            Value::String(s) => Err(format!(
                "{path} is '{s}' but the 2021-04-12 swagger allows only {}",
                allowed.join(", ")
            )),
            _ => mismatch("a string"),
        },
        Ty::Bool => match value {
            Value::Bool(_) => Ok(()),
            _ => mismatch("true or false"),
        },
        Ty::Int32 => match value.as_i64() {
            Some(n) if i32::try_from(n).is_ok() => Ok(()),
            _ => mismatch("a 32-bit integer"),
        },
        Ty::Int64 => match value.as_i64() {
            Some(_) => Ok(()),
            _ => mismatch("a 64-bit integer"),
        },
        Ty::ArrayOf(item) => match value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| validate(v, item, &format!("{path}[{i}]"))),
            _ => mismatch("an array"),
        },
        Ty::MapOf(item) => match value {
            Value::Object(map) => map
                .iter()
                .try_for_each(|(k, v)| validate(v, item, &format!("{path}.{k}"))),
            _ => mismatch("an object"),
        },
        Ty::Model(model) => match value {
            Value::Object(map) => {
                for (key, field_value) in map {
                    let Some((_, field_ty)) = model.fields.iter().find(|(name, _)| name == key)
                    else {
                        let known: Vec<&str> = model.fields.iter().map(|(n, _)| *n).collect();
                        return Err(format!(
                            "{path}.{key} is not a property of the swagger model {} (known: {})",
                            model.name,
                            known.join(", ")
                        ));
                    };
                    validate(field_value, field_ty, &format!("{path}.{key}"))?;
                }
                Ok(())
            }
            _ => mismatch(&format!("an object ({})", model.name)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn device(body: Value) -> Result<(), String> {
        validate(&body, &Ty::Model(&DEVICE), "$")
    }

    #[test]
    fn sdk_device_bodies_pass() {
        let body = json!({"deviceId":"edge1","status":"enabled","authentication":{"symmetricKey":{"primaryKey":"","secondaryKey":""},"type":"sas"},"capabilities":{"iotEdge":true},"deviceScope":null,"parentScopes":["ms-azure-iot-edge://p-1"]});
        assert_eq!(device(body), Ok(()));
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = device(json!({"deviceId": "d", "parentScope": "x"})).unwrap_err();
        assert!(
            err.starts_with("$.parentScope is not a property of the swagger model Device"),
            "{err}"
        );
        let err =
            device(json!({"authentication": {"symmetricKey": {"primary": "x"}}})).unwrap_err();
        assert!(
            err.contains("$.authentication.symmetricKey.primary"),
            "{err}"
        );
    }

    #[test]
    fn ill_typed_fields_are_named() {
        let err = device(json!({"capabilities": {"iotEdge": "true"}})).unwrap_err();
        assert_eq!(
            err,
            "$.capabilities.iotEdge is a string but the 2021-04-12 swagger expects true or false"
        );
        assert!(
            device(json!({"status": "on"}))
                .unwrap_err()
                .contains("enabled, disabled")
        );
        assert!(device(json!({"parentScopes": "x"})).is_err());
        assert!(device(json!({"parentScopes": [1]})).is_err());
        assert!(device(json!({"cloudToDeviceMessageCount": 5_000_000_000_i64})).is_err());
        assert!(device(json!([])).is_err());
    }

    #[test]
    fn free_form_sections_accept_any_json() {
        let twin =
            json!({"tags": {"a": "b", "n": {"x": [1, 2]}}, "properties": {"desired": {"k": 1}}});
        assert_eq!(validate(&twin, &Ty::Model(&TWIN), "$"), Ok(()));
        let config = json!({"id": "c", "priority": 3, "labels": {"a": "b"},
            "content": {"modulesContent": {"$edgeAgent": {"properties.desired.modules.m": {"x": 1}},
                                           "$edgeHub": {"properties.desired.routes.r": "FROM a INTO b"}}},
            "metrics": {"queries": {"q": "SELECT deviceId FROM devices"}}});
        assert_eq!(validate(&config, &Ty::Model(&CONFIGURATION), "$"), Ok(()));
        let bad = json!({"labels": {"a": 1}});
        assert!(validate(&bad, &Ty::Model(&CONFIGURATION), "$").is_err());
        let bad_content = json!({"content": {"modulesContent": {"$edgeAgent": "x"}}});
        assert!(validate(&bad_content, &Ty::Model(&CONFIGURATION), "$").is_err());
    }

    #[test]
    fn bulk_bodies() {
        let ok = json!([{"id": "a", "importMode": "create", "tags": {"x": 1}}]);
        assert_eq!(validate(&ok, &BULK_BODY, "$"), Ok(()));
        let bad = json!([{"id": "a", "importMode": "upsert"}]);
        assert!(
            validate(&bad, &BULK_BODY, "$")
                .unwrap_err()
                .starts_with("$[0].importMode")
        );
    }
}
