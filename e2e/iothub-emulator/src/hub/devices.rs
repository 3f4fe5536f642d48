//! Device and module identities: create, update, read, delete, list, statistics.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::{Hub, IfMatch, Reply};
use crate::error::{ErrorCode, HubError};
use crate::registry::{
    Authentication, Device, DeviceInput, EDGE_SCOPE_PREFIX, Fields, Module, SYSTEM_MODULES,
    identity_etag, parse_authentication, parse_device_input, validate_id,
};
use crate::scopes::check_parent_rules;
use crate::twin::TwinState;

/// Module identities one device may have.
pub const MAX_MODULES_PER_DEVICE: usize = 50;

/// The `existingVersion`/`newVersion` numbers Azure prints in a 412 (etags are base64 decimals).
fn etag_number(etag: &str) -> String {
    BASE64
        .decode(etag)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| s.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| etag.to_string())
}

/// The 412 of an identity whose etag did not match.
pub(super) fn precondition_failed(kind: &str, current: &str, if_match: &IfMatch) -> HubError {
    let given = match if_match {
        IfMatch::Etag(e) => etag_number(e),
        _ => String::new(),
    };
    HubError::new(
        ErrorCode::PreconditionFailed,
        format!(
            "Precondition failed: {kind} version did not match, existingVersion:{} newVersion:{given}",
            etag_number(current)
        ),
    )
}

/// Where a device's scopes end up after a create or update.
fn resolve_scopes(
    is_edge: bool,
    own_scope: Option<String>,
    input_scope: Option<String>,
    input_parents: Option<Vec<String>>,
    current: Option<&Device>,
) -> (Option<String>, Vec<String>) {
    if is_edge {
        // An edge device's scope is its own, generated and immutable; its parent is parentScopes.
        let parents = input_parents
            .or_else(|| current.map(|d| d.parent_scopes.clone()))
            .unwrap_or_default();
        return (own_scope, parents);
    }
    let scope = match input_scope {
        Some(s) if s.is_empty() => None,
        Some(s) => Some(s),
        None => current
            .filter(|d| !d.iot_edge)
            .and_then(|d| d.device_scope.clone()),
    };
    let parents = match input_parents {
        Some(p) if !p.is_empty() => p,
        // The service copies a leaf's deviceScope into its parentScopes.
        _ => scope.clone().into_iter().collect(),
    };
    (scope, parents)
}

impl Hub {
    fn new_module(&mut self, id: &str, now_ms: i64) -> Module {
        Module {
            id: id.to_string(),
            generation_id: self.next_generation(now_ms),
            etag_number: self.next_etag(),
            managed_by: None,
            authentication: Authentication::generated_sas(),
            twin: TwinState::new(now_ms),
            last_activity_ms: None,
        }
    }

    fn add_system_modules(&mut self, device_id: &str, now_ms: i64) {
        for name in SYSTEM_MODULES {
            let exists = self
                .devices
                .get(device_id)
                .is_some_and(|d| d.modules.contains_key(name));
            if !exists {
                let module = self.new_module(name, now_ms);
                if let Some(device) = self.devices.get_mut(device_id) {
                    device.modules.insert(name.to_string(), module);
                }
            }
        }
    }

    fn check_parents(
        &self,
        id: &str,
        own_scope: Option<&str>,
        parents: &[String],
    ) -> Result<(), HubError> {
        if self.strict() {
            check_parent_rules(self, id, own_scope, parents)?;
        }
        Ok(())
    }

    /// Registers a new device. Used by PUT and by bulk `create`.
    pub(super) fn create_device(
        &mut self,
        id: &str,
        input: DeviceInput,
        now_ms: i64,
    ) -> Result<(), HubError> {
        validate_id("device", id)?;
        let is_edge = input.iot_edge.unwrap_or(false);
        let generation_id = self.next_generation(now_ms);
        let own_scope = is_edge.then(|| format!("{EDGE_SCOPE_PREFIX}{id}-{generation_id}"));
        let (device_scope, parent_scopes) = resolve_scopes(
            is_edge,
            own_scope.clone(),
            input.device_scope,
            input.parent_scopes,
            None,
        );
        self.check_parents(id, own_scope.as_deref(), &parent_scopes)?;
        let device = Device {
            id: id.to_string(),
            generation_id,
            etag_number: self.next_etag(),
            enabled: input.enabled.unwrap_or(true),
            status_reason: input.status_reason,
            status_updated_ms: None,
            authentication: input
                .authentication
                .unwrap_or_else(Authentication::generated_sas),
            iot_edge: is_edge,
            device_scope,
            parent_scopes,
            last_activity_ms: None,
            twin: TwinState::new(now_ms),
            modules: BTreeMap::new(),
            per_device_content: false,
            deployed_desired: BTreeMap::new(),
        };
        if let Some(scope) = &own_scope {
            self.scope_index.insert(scope.clone(), id.to_string());
        }
        self.devices.insert(id.to_string(), device);
        if is_edge {
            self.add_system_modules(id, now_ms);
        }
        self.mark_changed(id);
        if !self.evaluates_on_schedule() {
            self.reevaluate_device(id, now_ms);
        }
        Ok(())
    }

    /// Replaces a registered device's identity. Used by PUT with If-Match and by bulk `update`.
    pub(super) fn update_device(
        &mut self,
        id: &str,
        input: DeviceInput,
        now_ms: i64,
    ) -> Result<(), HubError> {
        let current = self
            .devices
            .get(id)
            .ok_or_else(|| HubError::device_not_found(id))?;
        let is_edge = input.iot_edge.unwrap_or(current.iot_edge);
        let own_scope = is_edge.then(|| {
            if current.iot_edge
                && let Some(scope) = &current.device_scope
            {
                scope.clone()
            } else {
                format!("{EDGE_SCOPE_PREFIX}{id}-{}", current.generation_id)
            }
        });
        let (device_scope, parent_scopes) = resolve_scopes(
            is_edge,
            own_scope.clone(),
            input.device_scope,
            input.parent_scopes,
            Some(current),
        );
        self.check_parents(id, own_scope.as_deref(), &parent_scopes)?;
        let old_own_scope = current
            .iot_edge
            .then(|| current.device_scope.clone())
            .flatten();
        let etag_number = self.next_etag();
        let device = self.devices.get_mut(id).expect("checked above");
        if let Some(enabled) = input.enabled
            && enabled != device.enabled
        {
            device.enabled = enabled;
            device.status_updated_ms = Some(now_ms);
        }
        if input.status_reason.is_some() {
            device.status_reason = input.status_reason;
        }
        if let Some(auth) = input.authentication {
            device.authentication = auth;
        }
        device.iot_edge = is_edge;
        device.device_scope = device_scope;
        device.parent_scopes = parent_scopes;
        device.etag_number = etag_number;
        if let Some(old) = old_own_scope {
            self.scope_index.remove(&old);
        }
        if let Some(scope) = own_scope {
            self.scope_index.insert(scope, id.to_string());
            self.add_system_modules(id, now_ms);
        }
        self.mark_changed(id);
        if !self.evaluates_on_schedule() {
            self.reevaluate_device(id, now_ms);
        }
        Ok(())
    }

    /// `PUT /devices/{id}`: create without If-Match (200, 409 if it exists), update with it.
    pub fn put_device(
        &mut self,
        id: &str,
        body: &Value,
        if_match: &IfMatch,
        now_ms: i64,
    ) -> Result<Reply, HubError> {
        validate_id("device", id)?;
        let current_auth = self.devices.get(id).map(|d| d.authentication.clone());
        let input = parse_device_input(body, "Device", "deviceId", current_auth.as_ref())?;
        if let Some(body_id) = &input.device_id
            && body_id != id
        {
            return Err(HubError::bad_request(format!(
                "deviceId '{body_id}' in the body differs from '{id}' in the URL; send the same id in both"
            )));
        }
        match (self.devices.get(id), if_match) {
            (None, IfMatch::Absent) => self.create_device(id, input, now_ms)?,
            (Some(_), IfMatch::Absent) => {
                return Err(HubError::new(
                    ErrorCode::DeviceAlreadyExists,
                    format!(
                        "A device with ID '{id}' is already registered; to update it, send If-Match with its etag or \"*\""
                    ),
                ));
            }
            (None, _) => return Err(HubError::device_not_found(id)),
            (Some(device), precondition) => {
                if !precondition.admits(&device.etag()) {
                    return Err(precondition_failed("Device", &device.etag(), precondition));
                }
                self.update_device(id, input, now_ms)?;
            }
        }
        self.get_device(id)
    }

    /// `GET /devices/{id}`.
    pub fn get_device(&self, id: &str) -> Result<Reply, HubError> {
        let device = self
            .devices
            .get(id)
            .ok_or_else(|| HubError::device_not_found(id))?;
        Ok(Reply::ok(device.render()).with_etag(device.etag()))
    }

    /// Removes a device with its modules and twins. Used by DELETE and bulk `delete`.
    pub(super) fn remove_device(&mut self, id: &str) {
        self.mark_changed(id);
        if let Some(device) = self.devices.remove(id)
            && device.iot_edge
            && let Some(scope) = device.device_scope
        {
            self.scope_index.remove(&scope);
        }
    }

    /// `DELETE /devices/{id}` (If-Match optional).
    pub fn delete_device(&mut self, id: &str, if_match: &IfMatch) -> Result<Reply, HubError> {
        let device = self
            .devices
            .get(id)
            .ok_or_else(|| HubError::device_not_found(id))?;
        if !if_match.admits(&device.etag()) {
            return Err(precondition_failed("Device", &device.etag(), if_match));
        }
        self.remove_device(id);
        Ok(Reply::no_content())
    }

    /// `GET /devices?top=N`: "any value outside 1-1000 is considered 1000".
    pub fn list_devices(&self, top: Option<i64>) -> Reply {
        let top = top.filter(|t| (1..=1000).contains(t)).unwrap_or(1000);
        let devices: Vec<Value> = self
            .devices
            .values()
            .take(usize::try_from(top).unwrap_or(1000))
            .map(Device::render)
            .collect();
        Reply::ok(Value::Array(devices))
    }

    fn device_mut(&mut self, id: &str) -> Result<&mut Device, HubError> {
        self.devices
            .get_mut(id)
            .ok_or_else(|| HubError::device_not_found(id))
    }

    /// `GET /devices/{id}/modules`.
    pub fn list_modules(&self, device_id: &str) -> Result<Reply, HubError> {
        let device = self
            .devices
            .get(device_id)
            .ok_or_else(|| HubError::device_not_found(device_id))?;
        let modules = device
            .modules
            .values()
            .map(|m| device.render_module(m))
            .collect();
        Ok(Reply::ok(Value::Array(modules)))
    }

    /// `GET /devices/{id}/modules/{mid}`.
    pub fn get_module(&self, device_id: &str, module_id: &str) -> Result<Reply, HubError> {
        let device = self
            .devices
            .get(device_id)
            .ok_or_else(|| HubError::device_not_found(device_id))?;
        let module = device
            .modules
            .get(module_id)
            .ok_or_else(|| HubError::module_not_found(device_id, module_id))?;
        Ok(Reply::ok(device.render_module(module)).with_etag(identity_etag(module.etag_number)))
    }

    fn refuse_system_module(device_id: &str, module_id: &str) -> Result<(), HubError> {
        if SYSTEM_MODULES.contains(&module_id) {
            return Err(HubError::new(
                ErrorCode::SystemModuleModifyUnauthorizedAccess,
                format!(
                    "{module_id} on device {device_id} is a system module of IoT Edge; the hub manages its identity"
                ),
            ));
        }
        Ok(())
    }

    /// `PUT /devices/{id}/modules/{mid}`.
    pub fn put_module(
        &mut self,
        device_id: &str,
        module_id: &str,
        body: &Value,
        if_match: &IfMatch,
        now_ms: i64,
    ) -> Result<Reply, HubError> {
        validate_id("module", module_id)?;
        let device = self
            .devices
            .get(device_id)
            .ok_or_else(|| HubError::device_not_found(device_id))?;
        Self::refuse_system_module(device_id, module_id)?;
        let fields = Fields::of(body, "Module")?;
        if let Some(body_id) = fields.string("moduleId")?
            && body_id != module_id
        {
            return Err(HubError::bad_request(format!(
                "moduleId '{body_id}' in the body differs from '{module_id}' in the URL"
            )));
        }
        if let Some(body_device) = fields.string("deviceId")?
            && body_device != device_id
        {
            return Err(HubError::bad_request(format!(
                "deviceId '{body_device}' in the body differs from '{device_id}' in the URL"
            )));
        }
        let current = device.modules.get(module_id);
        let authentication = match fields.nested("authentication")? {
            Some(auth) => Some(parse_authentication(
                &auth,
                current.map(|m| &m.authentication),
            )?),
            None => None,
        };
        let managed_by = fields.string("managedBy")?;
        match (current, if_match) {
            (None, IfMatch::Absent) => {
                if device.modules.len() >= MAX_MODULES_PER_DEVICE {
                    return Err(HubError::new(
                        ErrorCode::TooManyModulesOnDevice,
                        format!(
                            "device {device_id} already has {MAX_MODULES_PER_DEVICE} modules, the most a device can have; delete one first"
                        ),
                    ));
                }
                let mut module = self.new_module(module_id, now_ms);
                module.managed_by = managed_by;
                if let Some(auth) = authentication {
                    module.authentication = auth;
                }
                let device = self.device_mut(device_id)?;
                if let Some(desired) = device.deployed_desired.get(module_id).cloned() {
                    module.twin.desired.replace(desired, now_ms);
                }
                device.modules.insert(module_id.to_string(), module);
                self.mark_changed(device_id);
            }
            (Some(_), IfMatch::Absent) => {
                return Err(HubError::new(
                    ErrorCode::ModuleAlreadyExistsOnDevice,
                    format!(
                        "module {module_id} already exists on device {device_id}; to update it, send If-Match"
                    ),
                ));
            }
            (None, _) => return Err(HubError::module_not_found(device_id, module_id)),
            (Some(module), precondition) => {
                let etag = identity_etag(module.etag_number);
                if !precondition.admits(&etag) {
                    return Err(precondition_failed("Module", &etag, precondition));
                }
                let etag_number = self.next_etag();
                let module = self
                    .device_mut(device_id)?
                    .modules
                    .get_mut(module_id)
                    .expect("checked above");
                module.etag_number = etag_number;
                if managed_by.is_some() {
                    module.managed_by = managed_by;
                }
                if let Some(auth) = authentication {
                    module.authentication = auth;
                }
                self.mark_changed(device_id);
            }
        }
        self.get_module(device_id, module_id)
    }

    /// `DELETE /devices/{id}/modules/{mid}`.
    pub fn delete_module(
        &mut self,
        device_id: &str,
        module_id: &str,
        if_match: &IfMatch,
    ) -> Result<Reply, HubError> {
        let device = self.device_mut(device_id)?;
        let module = device
            .modules
            .get(module_id)
            .ok_or_else(|| HubError::module_not_found(device_id, module_id))?;
        Self::refuse_system_module(device_id, module_id)?;
        let etag = identity_etag(module.etag_number);
        if !if_match.admits(&etag) {
            return Err(precondition_failed("Module", &etag, if_match));
        }
        device.modules.remove(module_id);
        self.mark_changed(device_id);
        Ok(Reply::no_content())
    }

    /// `GET /statistics/devices`.
    pub fn device_statistics(&self) -> Reply {
        let enabled = self.devices.values().filter(|d| d.enabled).count();
        Reply::ok(json!({
            "totalDeviceCount": self.devices.len(),
            "enabledDeviceCount": enabled,
            "disabledDeviceCount": self.devices.len() - enabled,
        }))
    }

    /// `GET /statistics/service`: devices never hold connections to the emulator.
    pub fn service_statistics(&self) -> Reply {
        Reply::ok(json!({"connectedDeviceCount": 0}))
    }
}
