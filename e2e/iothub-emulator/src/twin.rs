//! Device and module twins: tags, desired and reported properties with `$metadata` and
//! `$version`, the twin `version` and its etag.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use crate::clock::format_timestamp;

/// Largest nesting of objects below the root of tags, desired or reported.
pub const MAX_DEPTH: usize = 10;
/// Size limits of the sections, in bytes of their JSON (IoT Hub quotas).
pub const MAX_TAGS_BYTES: usize = 8 * 1024;
/// Desired and reported properties each.
pub const MAX_PROPERTIES_BYTES: usize = 32 * 1024;

/// One property section (desired or reported): values, per-node metadata and a version.
#[derive(Debug, Clone)]
pub struct PropertySet {
    values: Map<String, Value>,
    metadata: Map<String, Value>,
    version: i64,
    /// Desired metadata carries `$lastUpdatedVersion`; reported does not.
    tracks_version: bool,
}

impl PropertySet {
    /// An empty section stamped at `now`.
    pub fn new(now_ms: i64, tracks_version: bool) -> Self {
        let mut metadata = Map::new();
        metadata.insert("$lastUpdated".into(), format_timestamp(now_ms).into());
        if tracks_version {
            metadata.insert("$lastUpdatedVersion".into(), 1.into());
        }
        Self {
            values: Map::new(),
            metadata,
            version: 1,
            tracks_version,
        }
    }

    /// The section's `$version`.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The values without `$metadata` and `$version`.
    pub fn values(&self) -> &Map<String, Value> {
        &self.values
    }

    /// Applies a JSON merge patch (`null` removes). Returns whether anything changed.
    pub fn patch(&mut self, patch: &Map<String, Value>, now_ms: i64) -> bool {
        let mut merged = self.values.clone();
        merge_patch(&mut merged, patch);
        if merged == self.values {
            return false;
        }
        self.version += 1;
        let stamp = self.stamp(now_ms);
        merge_metadata(&mut self.metadata, patch, &stamp);
        self.metadata.extend(stamp);
        self.values = merged;
        true
    }

    /// Replaces all values. Returns whether anything changed.
    pub fn replace(&mut self, values: Map<String, Value>, now_ms: i64) -> bool {
        if values == self.values {
            return false;
        }
        self.version += 1;
        let stamp = self.stamp(now_ms);
        let mut metadata = fresh_metadata(&values, &stamp);
        metadata.extend(stamp);
        self.metadata = metadata;
        self.values = values;
        true
    }

    fn stamp(&self, now_ms: i64) -> Map<String, Value> {
        let mut stamp = Map::new();
        stamp.insert("$lastUpdated".into(), format_timestamp(now_ms).into());
        if self.tracks_version {
            stamp.insert("$lastUpdatedVersion".into(), (self.version).into());
        }
        stamp
    }

    /// The section as IoT Hub renders it: values plus `$metadata` and `$version`.
    pub fn render(&self) -> Value {
        let mut out = self.values.clone();
        out.insert("$metadata".into(), Value::Object(self.metadata.clone()));
        out.insert("$version".into(), self.version.into());
        Value::Object(out)
    }
}

/// JSON merge patch (RFC 7386) on objects.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                if let Some(Value::Object(existing)) = target.get_mut(key) {
                    merge_patch(existing, inner);
                } else {
                    let mut fresh = Map::new();
                    merge_patch(&mut fresh, inner);
                    target.insert(key.clone(), Value::Object(fresh));
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

fn fresh_metadata(values: &Map<String, Value>, stamp: &Map<String, Value>) -> Map<String, Value> {
    values
        .iter()
        .map(|(key, value)| {
            let mut node = stamp.clone();
            if let Value::Object(inner) = value {
                node.extend(fresh_metadata(inner, stamp));
            }
            (key.clone(), Value::Object(node))
        })
        .collect()
}

fn merge_metadata(
    meta: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    stamp: &Map<String, Value>,
) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                meta.remove(key);
            }
            Value::Object(inner) => {
                let node = meta
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(node) = node {
                    merge_metadata(node, inner, stamp);
                    node.extend(stamp.clone());
                }
            }
            _ => {
                meta.insert(key.clone(), Value::Object(stamp.clone()));
            }
        }
    }
}

/// Whether a twin key is acceptable: 1-1024 bytes without `.`, `$`, space or control
/// characters, and with `check_hash` without `#` either (the hub's own error names all five;
/// azure-iot-sdk-java#243).
pub fn twin_key_ok(key: &str, check_hash: bool) -> bool {
    !(key.is_empty()
        || key.len() > 1024
        || key.contains(['.', '$', ' '])
        || (check_hash && key.contains('#'))
        || key.chars().any(char::is_control))
}

/// The rule [`twin_key_ok`] applies, for messages.
pub fn twin_key_rule(check_hash: bool) -> &'static str {
    if check_hash {
        "twin keys must be 1-1024 bytes without '.', '$', '#', spaces or control characters"
    } else {
        "twin keys must be 1-1024 bytes without '.', '$', spaces or control characters"
    }
}

/// Checks twin property keys and depth: keys as [`twin_key_ok`] says, objects nested at most
/// [`MAX_DEPTH`] deep. `section` names the part for the message.
pub fn validate_properties(
    section: &str,
    values: &Map<String, Value>,
    max_bytes: usize,
    check_hash: bool,
) -> Result<(), String> {
    validate_keys(section, values, check_hash)?;
    let size = serde_json::to_vec(values).map(|v| v.len()).unwrap_or(0);
    if size > max_bytes {
        return Err(format!(
            "{section} is {size} bytes; IoT Hub allows at most {max_bytes}"
        ));
    }
    Ok(())
}

/// The key and depth part of [`validate_properties`].
pub fn validate_keys(
    section: &str,
    values: &Map<String, Value>,
    check_hash: bool,
) -> Result<(), String> {
    fn walk(
        path: &str,
        values: &Map<String, Value>,
        depth: usize,
        check_hash: bool,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "{path} nests objects deeper than {MAX_DEPTH} levels; flatten it"
            ));
        }
        for (key, value) in values {
            if !twin_key_ok(key, check_hash) {
                return Err(format!(
                    "key '{}' in {path} is invalid: {}",
                    key.escape_default(),
                    twin_key_rule(check_hash)
                ));
            }
            if let Value::Object(inner) = value {
                walk(&format!("{path}.{key}"), inner, depth + 1, check_hash)?;
            }
        }
        Ok(())
    }
    walk(section, values, 1, check_hash)
}

/// Removes the read-only `$metadata`/`$version` keys a client may echo back.
pub fn strip_system_keys(mut values: Map<String, Value>) -> Map<String, Value> {
    values.remove("$metadata");
    values.remove("$version");
    values
}

/// The twin state of a device or module.
#[derive(Debug, Clone)]
pub struct TwinState {
    /// Tags (service-only).
    pub tags: Map<String, Value>,
    /// Desired properties (service writes, device reads).
    pub desired: PropertySet,
    /// Reported properties (device writes).
    pub reported: PropertySet,
    /// Twin `version`: bumps on every change.
    pub version: i64,
    /// Counter behind the twin etag: bumps when tags or desired change.
    etag_counter: u64,
    /// `configurations.<id>.status` written by the configuration engine.
    pub configurations: std::collections::BTreeMap<String, String>,
}

impl TwinState {
    /// A new, empty twin.
    pub fn new(now_ms: i64) -> Self {
        Self {
            tags: Map::new(),
            desired: PropertySet::new(now_ms, true),
            reported: PropertySet::new(now_ms, false),
            version: 1,
            etag_counter: 1,
            configurations: Default::default(),
        }
    }

    /// The twin etag (base64 of an 8-byte counter, like `AAAAAAAAAAE=`).
    pub fn etag(&self) -> String {
        BASE64.encode(self.etag_counter.to_be_bytes())
    }

    /// Records a service-side change (tags or desired).
    pub fn touch_service_side(&mut self) {
        self.version += 1;
        self.etag_counter += 1;
    }

    /// Records a device-side change (reported).
    pub fn touch_device_side(&mut self) {
        self.version += 1;
    }

    /// Applies a service PATCH (tags and desired merge). Returns whether anything changed.
    pub fn patch_service(
        &mut self,
        tags: Option<&Map<String, Value>>,
        desired: Option<&Map<String, Value>>,
        now_ms: i64,
    ) -> bool {
        let mut changed = false;
        if let Some(tags) = tags {
            let mut merged = self.tags.clone();
            merge_patch(&mut merged, tags);
            if merged != self.tags {
                self.tags = merged;
                changed = true;
            }
        }
        if let Some(desired) = desired {
            changed |= self.desired.patch(desired, now_ms);
        }
        if changed {
            self.touch_service_side();
        }
        changed
    }

    /// Applies a service PUT (tags and desired replaced). Returns whether anything changed.
    pub fn replace_service(
        &mut self,
        tags: Map<String, Value>,
        desired: Map<String, Value>,
        now_ms: i64,
    ) -> bool {
        let mut changed = false;
        if tags != self.tags {
            self.tags = tags;
            changed = true;
        }
        changed |= self.desired.replace(desired, now_ms);
        if changed {
            self.touch_service_side();
        }
        changed
    }

    /// Applies a device's reported-properties patch.
    pub fn patch_reported(&mut self, patch: &Map<String, Value>, now_ms: i64) -> bool {
        let changed = self.reported.patch(patch, now_ms);
        if changed {
            self.touch_device_side();
        }
        changed
    }

    /// `properties` as rendered in twin JSON.
    pub fn render_properties(&self) -> Value {
        json!({"desired": self.desired.render(), "reported": self.reported.render()})
    }

    /// `configurations` as rendered in twin JSON, if any configuration touched this twin.
    pub fn render_configurations(&self) -> Option<Value> {
        if self.configurations.is_empty() {
            return None;
        }
        Some(Value::Object(
            self.configurations
                .iter()
                .map(|(id, status)| (id.clone(), json!({"status": status})))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn merge_patch_adds_replaces_and_removes() {
        let mut target = obj(json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}));
        merge_patch(
            &mut target,
            &obj(json!({"a": null, "b": {"c": 5, "d": null}, "f": {"g": null}})),
        );
        assert_eq!(
            Value::Object(target),
            json!({"b": {"c": 5}, "e": [1], "f": {}})
        );
    }

    #[test]
    fn patches_bump_versions_only_on_change() {
        let mut twin = TwinState::new(0);
        let etag0 = twin.etag();
        assert_eq!(etag0, "AAAAAAAAAAE=");
        assert!(twin.patch_service(Some(&obj(json!({"env": "prod"}))), None, 1));
        assert_eq!(twin.version, 2);
        assert_ne!(twin.etag(), etag0);
        assert!(!twin.patch_service(Some(&obj(json!({"env": "prod"}))), None, 2));
        assert_eq!(twin.version, 2);
        let etag1 = twin.etag();
        assert!(twin.patch_reported(&obj(json!({"x": 1})), 3));
        assert_eq!(twin.version, 3);
        assert_eq!(twin.reported.version(), 2);
        // Reported changes do not move the service-side etag.
        assert_eq!(twin.etag(), etag1);
    }

    #[test]
    fn rendered_sections_carry_metadata() {
        let mut set = PropertySet::new(0, true);
        set.patch(&obj(json!({"a": {"b": 1}})), 1000);
        let rendered = set.render();
        assert_eq!(rendered["$version"], 2);
        assert_eq!(rendered["a"]["b"], 1);
        assert_eq!(rendered["$metadata"]["a"]["b"]["$lastUpdatedVersion"], 2);
        assert!(rendered["$metadata"]["$lastUpdated"].is_string());
        set.replace(obj(json!({"z": true})), 2000);
        assert!(set.render()["$metadata"].get("a").is_none());
    }

    #[test]
    fn keys_and_depth_are_checked() {
        assert!(
            validate_properties("tags", &obj(json!({"ok": {"fine_key": 1}})), 100, true).is_ok()
        );
        for bad in [
            json!({"a.b": 1}),
            json!({"$x": 1}),
            json!({"a b": 1}),
            json!({"": 1}),
            json!({"tab\there": 1}),
            json!({"ok": {"nested.dot": 1}}),
        ] {
            assert!(validate_properties("tags", &obj(bad), 100, false).is_err());
        }
        let mut deep = json!(1);
        for _ in 0..11 {
            deep = json!({"k": deep});
        }
        let err = validate_properties("desired", &obj(deep), 10_000, true).unwrap_err();
        assert!(err.contains("deeper"), "{err}");
        assert!(
            validate_properties("tags", &obj(json!({"a": "x".repeat(200)})), 100, true).is_err()
        );
    }

    #[test]
    fn hash_in_keys_is_refused_when_checked() {
        let hashed = obj(json!({"m2(<#a": 1}));
        let err = validate_properties("properties.reported", &hashed, 100, true).unwrap_err();
        assert!(err.contains("'#'"), "{err}");
        assert!(validate_properties("properties.reported", &hashed, 100, false).is_ok());
        // Values may hold any character.
        assert!(validate_properties("tags", &obj(json!({"a": "#.$ "})), 100, true).is_ok());
    }
}
