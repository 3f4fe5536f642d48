//! The emulator's own device-facing endpoint (real hubs use MQTT/AMQP for twins): a device or
//! module reads its desired properties, patches its reported properties and sends telemetry.

use serde_json::{Value, json};

use super::{Hub, Reply};
use crate::auth::{AuthError, SasToken};
use crate::error::HubError;
use crate::twin::{MAX_PROPERTIES_BYTES, validate_properties};

impl Hub {
    /// Authenticates a device-scoped credential for `device_id` (and `module_id`): a SAS token
    /// with `sr=<host>/devices/<id>[/modules/<mid>]` signed with that identity's key, or (without
    /// a token) a TLS client certificate whose thumbprint is registered for the device.
    pub fn authenticate_device(
        &self,
        device_id: &str,
        module_id: Option<&str>,
        token: Option<&SasToken>,
        client_thumbprints: &[String],
        hosts: &[String],
        now_secs: i64,
    ) -> Result<(), AuthError> {
        let device = self.devices.get(device_id).ok_or_else(|| {
            AuthError::Denied(format!("device {device_id} is not registered in this hub"))
        })?;
        if !device.enabled {
            return Err(AuthError::Denied(format!(
                "device {device_id} is disabled; enable it before it connects"
            )));
        }
        let Some(token) = token else {
            if client_thumbprints.is_empty() {
                return Err(AuthError::Missing);
            }
            if device.authentication.accepts_thumbprint(client_thumbprints) {
                return Ok(());
            }
            return Err(AuthError::Denied(format!(
                "the client certificate's thumbprint is not registered for device {device_id}"
            )));
        };
        token.check_expiry(now_secs)?;
        let (host, segments) = token.host_and_segments();
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
            return Err(AuthError::WrongResource {
                resource: token.resource.clone(),
                path: format!("device {device_id}"),
                hosts: hosts.join(", "),
            });
        }
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let keys: Vec<&str> = match segments.as_slice() {
            ["devices", id] if *id == device_id => device.authentication.keys(),
            ["devices", id, "modules", mid] if *id == device_id && Some(*mid) == module_id => {
                match device.modules.get(*mid) {
                    Some(module) => module.authentication.keys(),
                    None => vec![],
                }
            }
            _ => {
                return Err(AuthError::WrongResource {
                    resource: token.resource.clone(),
                    path: match module_id {
                        Some(m) => format!("module {m} of device {device_id}"),
                        None => format!("device {device_id}"),
                    },
                    hosts: hosts.join(", "),
                });
            }
        };
        if keys.iter().any(|key| token.signed_with(key)) {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }

    fn touch_activity(&mut self, device_id: &str, module_id: Option<&str>, now_ms: i64) {
        if let Some(device) = self.devices.get_mut(device_id) {
            device.last_activity_ms = Some(now_ms);
            if let Some(module) = module_id.and_then(|m| device.modules.get_mut(m)) {
                module.last_activity_ms = Some(now_ms);
            }
        }
    }

    /// `GET /devices/{id}[/modules/{mid}]/twin`: `{"desired": .., "reported": ..}` as a device
    /// receives it over MQTT.
    pub fn device_read_twin(
        &self,
        device_id: &str,
        module_id: Option<&str>,
    ) -> Result<Reply, HubError> {
        let device = self
            .devices
            .get(device_id)
            .ok_or_else(|| HubError::device_not_found(device_id))?;
        let twin = match module_id {
            None => &device.twin,
            Some(m) => {
                &device
                    .modules
                    .get(m)
                    .ok_or_else(|| HubError::module_not_found(device_id, m))?
                    .twin
            }
        };
        Ok(Reply::ok(
            json!({"desired": twin.desired.render(), "reported": twin.reported.render()}),
        ))
    }

    /// `PATCH /devices/{id}[/modules/{mid}]/twin/reported`: merge-patch reported properties
    /// (`null` removes). Answers 204 with the new reported `$version` in `x-ms-reported-version`.
    pub fn device_patch_reported(
        &mut self,
        device_id: &str,
        module_id: Option<&str>,
        body: &Value,
        now_ms: i64,
    ) -> Result<Reply, HubError> {
        let patch = body.as_object().ok_or_else(|| {
            HubError::bad_request("the reported-properties patch must be a JSON object")
        })?;
        let check_hash = self.realism().check_twin_keys;
        validate_properties(
            "properties.reported",
            patch,
            MAX_PROPERTIES_BYTES,
            check_hash,
        )
        .map_err(HubError::bad_request)?;
        let device = self
            .devices
            .get_mut(device_id)
            .ok_or_else(|| HubError::device_not_found(device_id))?;
        let twin = match module_id {
            None => &mut device.twin,
            Some(m) => {
                &mut device
                    .modules
                    .get_mut(m)
                    .ok_or_else(|| HubError::module_not_found(device_id, m))?
                    .twin
            }
        };
        let mut candidate = twin.clone();
        candidate.patch_reported(patch, now_ms);
        validate_properties(
            "properties.reported",
            candidate.reported.values(),
            MAX_PROPERTIES_BYTES,
            check_hash,
        )
        .map_err(HubError::bad_request)?;
        let version = candidate.reported.version();
        *twin = candidate;
        self.touch_activity(device_id, module_id, now_ms);
        self.mark_changed(device_id);
        Ok(Reply::no_content().with_header("x-ms-reported-version", version.to_string()))
    }

    /// `POST /devices/{id}[/modules/{mid}]/messages/events`: accepts a telemetry message.
    pub fn device_send_event(
        &mut self,
        device_id: &str,
        module_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Reply, HubError> {
        let device = self
            .devices
            .get(device_id)
            .ok_or_else(|| HubError::device_not_found(device_id))?;
        if let Some(m) = module_id
            && !device.modules.contains_key(m)
        {
            return Err(HubError::module_not_found(device_id, m));
        }
        self.touch_activity(device_id, module_id, now_ms);
        self.mark_changed(device_id);
        Ok(Reply::no_content())
    }
}
