//! `POST /devices`: bulk registry operations with per-device results and partial failure.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::{Hub, Reply};
use crate::error::{ErrorCode, HubError};
use crate::registry::{Fields, parse_device_input, render_bulk_result};
use crate::twin::{MAX_PROPERTIES_BYTES, MAX_TAGS_BYTES, strip_system_keys, validate_properties};

/// Devices one bulk call may carry.
pub const MAX_BULK_DEVICES: usize = 100;

const IMPORT_MODES: [&str; 8] = [
    "create",
    "update",
    "updateIfMatchETag",
    "delete",
    "deleteIfMatchETag",
    "updateTwin",
    "updateTwinIfMatchETag",
    // Not in the swagger enum; the .NET SDK's default ImportMode. Accepted when not --strict.
    "createOrUpdate",
];

/// Number of devices in a bulk body (quota units), at least 1.
pub fn bulk_units(body: &Value) -> u64 {
    body.as_array().map_or(1, |items| {
        u64::try_from(items.len()).unwrap_or(u64::MAX).max(1)
    })
}

fn unquote(etag: &str) -> &str {
    let etag = etag.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    etag.strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(etag)
}

/// Twin parts an ExportImportDevice may carry.
struct TwinParts {
    tags: Option<Map<String, Value>>,
    desired: Option<Map<String, Value>>,
    reported: Option<Map<String, Value>>,
}

fn twin_parts(fields: &Fields<'_>, check_hash: bool) -> Result<TwinParts, HubError> {
    let tags = fields.object("tags")?.cloned();
    let (desired, reported) = match fields.nested("properties")? {
        Some(p) => (
            p.object("desired")?.cloned().map(strip_system_keys),
            p.object("reported")?.cloned().map(strip_system_keys),
        ),
        None => (None, None),
    };
    if let Some(tags) = &tags {
        validate_properties("tags", tags, MAX_TAGS_BYTES, check_hash)
            .map_err(HubError::bad_request)?;
    }
    for (name, section) in [
        ("properties.desired", &desired),
        ("properties.reported", &reported),
    ] {
        if let Some(section) = section {
            validate_properties(name, section, MAX_PROPERTIES_BYTES, check_hash)
                .map_err(HubError::bad_request)?;
        }
    }
    Ok(TwinParts {
        tags,
        desired,
        reported,
    })
}

impl Hub {
    /// Runs a bulk call. Valid items are applied even when others fail; the answer is 200 with
    /// `isSuccessful: true`, or 400 with the failed items. A created device picked by
    /// `--inject-registered-without-twin` is registered without the twin of its item and
    /// reported in `warnings` as `DeviceRegisteredWithoutTwin`.
    pub fn bulk(&mut self, body: &Value, now_ms: i64) -> Result<Reply, HubError> {
        let items = body.as_array().ok_or_else(|| {
            HubError::bad_request(
                "the bulk body must be a JSON array of ExportImportDevice objects",
            )
        })?;
        if items.len() > MAX_BULK_DEVICES {
            return Err(HubError::bad_request(format!(
                "the bulk call carries {} devices; at most {MAX_BULK_DEVICES} can be specified per invocation, so split it",
                items.len()
            )));
        }
        let mut seen = HashSet::new();
        for item in items {
            if let Some(id) = item.get("id").and_then(Value::as_str)
                && !seen.insert(id)
            {
                return Err(HubError::new(
                    ErrorCode::DeviceDefinedMultipleTimes,
                    format!(
                        "device {id} appears more than once; a device identity can be specified only once per bulk call"
                    ),
                ));
            }
        }
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match self.bulk_item(index, item, now_ms) {
                Ok(Some(device_id)) => warnings.push(json!({
                    "deviceId": device_id,
                    "warningCode": "DeviceRegisteredWithoutTwin",
                    "warningStatus": format!(
                        "device {device_id} was registered but its twin (tags and properties of the request) was not stored; write the twin again (injected by --inject-registered-without-twin)"
                    ),
                })),
                Ok(None) => {}
                Err((device_id, operation, error)) => errors.push(json!({
                    "deviceId": device_id,
                    "errorCode": error.code.name(),
                    "errorStatus": error.message,
                    "moduleId": null,
                    "operation": operation,
                })),
            }
        }
        let result = render_bulk_result(&errors, &warnings);
        if errors.is_empty() {
            Ok(Reply::ok(result))
        } else {
            Ok(Reply::json(400, result).with_header(
                "iothub-errorcode",
                ErrorCode::BulkRegistryOperationFailure.name().into(),
            ))
        }
    }

    /// Applies one item. `Ok(Some(id))`: created without its twin (an injected warning).
    fn bulk_item(
        &mut self,
        index: usize,
        item: &Value,
        now_ms: i64,
    ) -> Result<Option<String>, (String, String, HubError)> {
        let raw_id = item
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let raw_mode = item
            .get("importMode")
            .and_then(Value::as_str)
            .unwrap_or("createOrUpdate")
            .to_string();
        let fail = |e: HubError| (raw_id.clone(), raw_mode.clone(), e);
        let path = format!("ExportImportDevice[{index}]");
        let fields = Fields::of(item, &path).map_err(fail)?;
        let id = fields
            .string("id")
            .map_err(fail)?
            .ok_or_else(|| fail(HubError::bad_request(format!("{path}.id is required"))))?;
        crate::registry::validate_id("device", &id).map_err(fail)?;
        if fields.string("moduleId").map_err(fail)?.is_some() {
            return Err(fail(HubError::bad_request(format!(
                "{path}.moduleId: bulk module operations are not supported by the emulator; use PUT /devices/{id}/modules/{{mid}}"
            ))));
        }
        let mode = fields
            .string("importMode")
            .map_err(fail)?
            .unwrap_or(raw_mode.clone());
        if !IMPORT_MODES.contains(&mode.as_str()) {
            return Err(fail(HubError::bad_request(format!(
                "{path}.importMode '{mode}' is not one of {}",
                IMPORT_MODES[..7].join(", ")
            ))));
        }
        let current = self.devices.get(&id);
        let current_auth = current.map(|d| d.authentication.clone());
        let input = parse_device_input(item, &path, "id", current_auth.as_ref()).map_err(fail)?;
        let parts = twin_parts(&fields, self.realism().check_twin_keys).map_err(fail)?;
        let exists = current.is_some();
        let device_etag = current.map(|d| d.etag());
        let twin_etag = current.map(|d| d.twin.etag());
        let etag_field = |name: &str| fields.string(name).ok().flatten();
        let etag_mismatch = |given: Option<String>,
                             actual: Option<String>|
         -> Result<(), HubError> {
            let given = given.unwrap_or_default();
            if Some(unquote(&given)) == actual.as_deref() {
                Ok(())
            } else {
                Err(HubError::new(
                    ErrorCode::EtagDoesNotMatch,
                    format!(
                        "the etag '{given}' given for device {id} does not match its current etag"
                    ),
                ))
            }
        };
        let not_found = || HubError::device_not_found(&id);
        match mode.as_str() {
            "create" | "createOrUpdate" if !exists => {
                self.create_device(&id, input, now_ms).map_err(fail)?;
                if self.realism().registered_without_twin.hits(&id) {
                    return Ok(Some(id));
                }
                self.write_bulk_twin(&id, parts, true, now_ms);
            }
            "create" => {
                return Err(fail(HubError::new(
                    ErrorCode::DeviceAlreadyExists,
                    format!("A device with ID '{id}' is already registered"),
                )));
            }
            "createOrUpdate" | "update" | "updateIfMatchETag" => {
                if !exists {
                    return Err(fail(not_found()));
                }
                if mode == "updateIfMatchETag" {
                    etag_mismatch(etag_field("eTag"), device_etag).map_err(fail)?;
                }
                self.update_device(&id, input, now_ms).map_err(fail)?;
                self.write_bulk_twin(&id, parts, false, now_ms);
            }
            "delete" | "deleteIfMatchETag" => {
                if !exists {
                    return Err(fail(not_found()));
                }
                if mode == "deleteIfMatchETag" {
                    etag_mismatch(etag_field("eTag"), device_etag).map_err(fail)?;
                }
                self.remove_device(&id);
            }
            _ => {
                // updateTwin, updateTwinIfMatchETag
                if !exists {
                    return Err(fail(not_found()));
                }
                if mode == "updateTwinIfMatchETag" {
                    etag_mismatch(etag_field("twinETag"), twin_etag).map_err(fail)?;
                }
                self.write_bulk_twin(&id, parts, false, now_ms);
            }
        }
        Ok(None)
    }

    /// Writes the twin parts of a bulk item; `fresh` twins take tags as given, others merge.
    fn write_bulk_twin(&mut self, id: &str, parts: TwinParts, fresh: bool, now_ms: i64) {
        let Some(device) = self.devices.get_mut(id) else {
            return;
        };
        let tags_before = device.twin.tags.clone();
        if fresh {
            if let Some(tags) = parts.tags {
                device.twin.tags = tags;
            }
            if let Some(desired) = parts.desired {
                device.twin.desired.replace(desired, now_ms);
            }
        } else {
            device
                .twin
                .patch_service(parts.tags.as_ref(), parts.desired.as_ref(), now_ms);
        }
        if let Some(reported) = parts.reported {
            device.twin.patch_reported(&reported, now_ms);
        }
        let tags_changed = device.twin.tags != tags_before;
        self.mark_changed(id);
        if tags_changed && !self.evaluates_on_schedule() {
            self.reevaluate_device(id, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_etags() {
        assert_eq!(bulk_units(&json!([1, 2, 3])), 3);
        assert_eq!(bulk_units(&json!([])), 1);
        assert_eq!(bulk_units(&json!({})), 1);
        assert_eq!(unquote("\"MQ==\""), "MQ==");
        assert_eq!(unquote("MQ=="), "MQ==");
        assert_eq!(unquote("W/\"x\""), "x");
    }
}
