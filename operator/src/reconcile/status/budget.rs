//! The size budget of a hierarchy object, and the status shortened to fit it (docs/status.md).
//!
//! etcd refuses a write over 1.5 MiB (its default `--max-request-bytes`), and a status patch
//! that fails that way fails on every retry while the old status stays visible. The operator
//! keeps the whole object (metadata with every manager's managedFields and kubectl's
//! last-applied annotation, spec, status) within [`OBJECT_BUDGET`], a third below that limit.
//! The spec and metadata are the user's; the status gets what they leave ([`status_room`]),
//! and [`for_apply`] shortens it in steps until it fits.

use crate::api::{DeviceStatus, EdgeHierarchy, EdgeHierarchyStatus, more_count};
use crate::names::MANAGER;

use super::{MAX_TEXT, cap_text};

/// The whole object, managedFields included, stays within this many bytes of JSON.
pub const OBJECT_BUDGET: usize = 1024 * 1024;
/// What the operator's own managedFields entry for the status may take. The device list is
/// atomic, so the entry names each top-level status field and each condition, not each
/// device: about 1 KiB, measured by `e2e/tests/tests/status_size.rs`.
pub const STATUS_FIELDS_ALLOWANCE: usize = 4 * 1024;
/// Items a device's list (failing and pending modules, drift) shows before `and N more`.
pub const MAX_ITEMS: usize = 3;
/// A text's length when only one item per list is kept.
const SHORT_TEXT: usize = 100;

/// Bytes left for the status in `hierarchy`'s object: the budget minus everything else the
/// object holds (its metadata without the operator's status entry in managedFields, and its
/// spec), minus [`STATUS_FIELDS_ALLOWANCE`].
pub fn status_room(hierarchy: &EdgeHierarchy) -> usize {
    let mut rest = hierarchy.clone();
    rest.status = None;
    if let Some(fields) = rest.metadata.managed_fields.as_mut() {
        fields.retain(|f| {
            !(f.manager.as_deref() == Some(MANAGER) && f.subresource.as_deref() == Some("status"))
        });
    }
    let used = serde_json::to_vec(&rest).map_or(0, |bytes| bytes.len());
    OBJECT_BUDGET.saturating_sub(used + STATUS_FIELDS_ALLOWANCE)
}

/// Bytes of a status as JSON.
pub fn status_bytes(status: &EdgeHierarchyStatus) -> usize {
    serde_json::to_vec(status).map_or(usize::MAX, |bytes| bytes.len())
}

/// The status as it is written: each device's lists cut to [`MAX_ITEMS`]; then, only while it
/// is larger than `room` bytes, one step after another:
///
/// 1. one item per list, each text cut to 100 bytes;
/// 2. texts kept for as many devices as fit, the first in the status (parents first); left
///    out for the rest, which `detailsOmitted` counts (states and counts stay);
/// 3. as 2, with the devices' `bundle` and `deployment` left out (the bundle revision, and the
///    deployment name the spec has; `DeploymentsReady` still says what is not applied);
/// 4. as 2, with device entries cut to id, layer, state and device scope (what a restart needs
///    to find the hierarchy's devices again).
///
/// Conditions are already capped where they are built ([`super::MAX_CONDITION_MESSAGE`]). A
/// status that fits is returned as it is, so fitting a written status again changes nothing.
pub fn for_apply(status: &EdgeHierarchyStatus, room: usize) -> EdgeHierarchyStatus {
    let mut out = status.clone();
    for device in &mut out.devices {
        shorten(device, MAX_ITEMS, MAX_TEXT);
    }
    if status_bytes(&out) <= room {
        return out;
    }
    for device in &mut out.devices {
        shorten(device, 1, SHORT_TEXT);
    }
    if status_bytes(&out) <= room {
        return out;
    }
    let omitted_before = status.details_omitted.unwrap_or(0);
    let texts = out.devices.clone();
    if keep_texts_that_fit(&mut out, &texts, room, omitted_before) {
        return out;
    }
    for device in &mut out.devices {
        device.bundle = None;
        device.deployment = None;
    }
    if keep_texts_that_fit(&mut out, &texts, room, omitted_before) {
        return out;
    }
    for device in &mut out.devices {
        device.certificate = None;
        device.modules = None;
    }
    if !keep_texts_that_fit(&mut out, &texts, room, omitted_before) {
        tracing::warn!(
            bytes = status_bytes(&out),
            room,
            devices = out.devices.len(),
            "the status does not fit the object's size budget even without device details; \
             the spec and metadata take most of it: split the hierarchy"
        );
    }
    out
}

/// Leaves out the texts of every device, then puts them back (from `texts`, the same devices
/// with their texts) device by device, in order, while the status stays within `room`. False
/// when even the status without texts is too big (then every text is left out).
fn keep_texts_that_fit(
    out: &mut EdgeHierarchyStatus,
    texts: &[DeviceStatus],
    room: usize,
    omitted_before: u32,
) -> bool {
    let mut omitted = omitted_before;
    for (device, with) in out.devices.iter_mut().zip(texts) {
        clear_texts(device);
        omitted += u32::from(has_texts(with));
    }
    // The count's digits only shrink as devices get their texts back.
    out.details_omitted = (omitted > 0).then_some(omitted);
    let mut size = status_bytes(out);
    if size > room {
        return false;
    }
    for (device, with) in out.devices.iter_mut().zip(texts) {
        if !has_texts(with) {
            continue;
        }
        let mut restored = device.clone();
        restored.drift = with.drift.clone();
        restored.message = with.message.clone();
        if let (Some(modules), Some(from)) = (restored.modules.as_mut(), with.modules.as_ref()) {
            modules.failing = from.failing.clone();
            modules.pending = from.pending.clone();
        }
        let cost = device_bytes(&restored).saturating_sub(device_bytes(device));
        if size + cost > room {
            break;
        }
        size += cost;
        *device = restored;
        omitted -= 1;
    }
    out.details_omitted = (omitted > 0).then_some(omitted);
    true
}

fn device_bytes(device: &DeviceStatus) -> usize {
    serde_json::to_vec(device).map_or(usize::MAX, |bytes| bytes.len())
}

/// At most `items` entries per list (then one `and N more`), each at most `text` bytes.
fn shorten(device: &mut DeviceStatus, items: usize, text: usize) {
    cap_list(&mut device.drift, items, text);
    if let Some(modules) = device.modules.as_mut() {
        cap_list(&mut modules.failing, items, text);
        cap_list(&mut modules.pending, items, text);
    }
    if let Some(message) = device.message.as_mut() {
        *message = cap_text(message, text.max(MAX_TEXT));
    }
}

fn cap_list(list: &mut Vec<String>, items: usize, text: usize) {
    // An `and N more` left by an earlier shortening counts the items it stands for.
    let mut hidden = 0;
    if let Some(last) = list.last()
        && let Some(n) = more_count(last)
    {
        hidden = n;
        list.pop();
    }
    if list.len() > items {
        hidden += list.len() - items;
        list.truncate(items);
    }
    for item in list.iter_mut() {
        *item = cap_text(item, text);
    }
    if hidden > 0 {
        list.push(format!("and {hidden} more"));
    }
}

fn has_texts(device: &DeviceStatus) -> bool {
    !device.drift.is_empty()
        || device.message.is_some()
        || device
            .modules
            .as_ref()
            .is_some_and(|m| !m.failing.is_empty() || !m.pending.is_empty())
}

fn clear_texts(device: &mut DeviceStatus) {
    device.drift.clear();
    device.message = None;
    if let Some(modules) = device.modules.as_mut() {
        modules.failing.clear();
        modules.pending.clear();
    }
}
