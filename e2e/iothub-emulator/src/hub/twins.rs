//! Service-side twin operations: read, patch and replace device and module twins.

use serde_json::{Map, Value};

use super::devices::precondition_failed;
use super::{Hub, IfMatch, Reply};
use crate::error::HubError;
use crate::registry::Fields;
use crate::twin::{
    MAX_PROPERTIES_BYTES, MAX_TAGS_BYTES, TwinState, strip_system_keys, validate_properties,
};

/// The parts of a Twin body the service may write.
struct TwinWrite {
    tags: Option<Map<String, Value>>,
    desired: Option<Map<String, Value>>,
}

fn parse_twin_write(body: &Value, check_hash: bool) -> Result<TwinWrite, HubError> {
    let fields = Fields::of(body, "Twin")?;
    let tags = fields.object("tags")?.cloned();
    let desired = match fields.nested("properties")? {
        Some(properties) => properties
            .object("desired")?
            .cloned()
            .map(strip_system_keys),
        None => None,
    };
    if let Some(tags) = &tags {
        validate_properties("tags", tags, MAX_TAGS_BYTES, check_hash)
            .map_err(HubError::bad_request)?;
    }
    if let Some(desired) = &desired {
        validate_properties(
            "properties.desired",
            desired,
            MAX_PROPERTIES_BYTES,
            check_hash,
        )
        .map_err(HubError::bad_request)?;
    }
    Ok(TwinWrite { tags, desired })
}

/// Applies a write to a twin after checking sizes of the result.
fn write_twin(
    twin: &mut TwinState,
    write: TwinWrite,
    replace: bool,
    now_ms: i64,
    check_hash: bool,
) -> Result<bool, HubError> {
    let mut candidate = twin.clone();
    let changed = if replace {
        candidate.replace_service(
            write.tags.unwrap_or_default(),
            write.desired.unwrap_or_default(),
            now_ms,
        )
    } else {
        candidate.patch_service(write.tags.as_ref(), write.desired.as_ref(), now_ms)
    };
    validate_properties("tags", &candidate.tags, MAX_TAGS_BYTES, check_hash)
        .map_err(HubError::bad_request)?;
    validate_properties(
        "properties.desired",
        candidate.desired.values(),
        MAX_PROPERTIES_BYTES,
        check_hash,
    )
    .map_err(HubError::bad_request)?;
    *twin = candidate;
    Ok(changed)
}

impl Hub {
    /// `GET /twins/{id}`.
    pub fn get_twin(&self, device_id: &str) -> Result<Reply, HubError> {
        let device = self
            .devices
            .get(device_id)
            .ok_or_else(|| HubError::device_not_found(device_id))?;
        Ok(Reply::ok(device.render_twin()).with_etag(device.twin.etag()))
    }

    /// `PATCH /twins/{id}` (`replace = false`) and `PUT /twins/{id}` (`replace = true`).
    pub fn write_device_twin(
        &mut self,
        device_id: &str,
        body: &Value,
        if_match: &IfMatch,
        replace: bool,
        now_ms: i64,
    ) -> Result<Reply, HubError> {
        let check_hash = self.realism().check_twin_keys;
        let write = parse_twin_write(body, check_hash)?;
        let device = self
            .devices
            .get_mut(device_id)
            .ok_or_else(|| HubError::device_not_found(device_id))?;
        if !if_match.admits(&device.twin.etag()) {
            return Err(precondition_failed("Twin", &device.twin.etag(), if_match));
        }
        let tags_before = device.twin.tags.clone();
        write_twin(&mut device.twin, write, replace, now_ms, check_hash)?;
        let tags_changed = device.twin.tags != tags_before;
        self.mark_changed(device_id);
        if tags_changed && !self.evaluates_on_schedule() {
            // Target conditions read tags.
            self.reevaluate_device(device_id, now_ms);
        }
        self.get_twin(device_id)
    }

    /// `GET /twins/{id}/modules/{mid}`.
    pub fn get_module_twin(&self, device_id: &str, module_id: &str) -> Result<Reply, HubError> {
        let device = self
            .devices
            .get(device_id)
            .ok_or_else(|| HubError::device_not_found(device_id))?;
        let module = device
            .modules
            .get(module_id)
            .ok_or_else(|| HubError::module_not_found(device_id, module_id))?;
        Ok(Reply::ok(device.render_module_twin(module)).with_etag(module.twin.etag()))
    }

    /// `PATCH`/`PUT /twins/{id}/modules/{mid}`.
    pub fn write_module_twin(
        &mut self,
        device_id: &str,
        module_id: &str,
        body: &Value,
        if_match: &IfMatch,
        replace: bool,
        now_ms: i64,
    ) -> Result<Reply, HubError> {
        let check_hash = self.realism().check_twin_keys;
        let write = parse_twin_write(body, check_hash)?;
        let module = self
            .devices
            .get_mut(device_id)
            .ok_or_else(|| HubError::device_not_found(device_id))?
            .modules
            .get_mut(module_id)
            .ok_or_else(|| HubError::module_not_found(device_id, module_id))?;
        if !if_match.admits(&module.twin.etag()) {
            return Err(precondition_failed("Twin", &module.twin.etag(), if_match));
        }
        write_twin(&mut module.twin, write, replace, now_ms, check_hash)?;
        self.mark_changed(device_id);
        self.get_module_twin(device_id, module_id)
    }
}
