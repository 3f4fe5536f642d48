//! How configurations combine on one device, as a pure function (Microsoft Learn, "Understand
//! IoT Edge automatic deployments": priorities and layered deployments).
//!
//! Edge deployments: of the standard deployments that target a device, the one with the highest
//! priority applies (the most recently created on ties); layered deployments with a higher rank
//! than it are merged on top in ascending rank, so the higher priority wins a clash. Targeted
//! deployments that lost are `Targeted`, the others `Applied`. A layered deployment ranked below
//! the standard one is not merged (the standard one's full `properties.desired` replaces it).
//! Device configurations (`deviceContent`): the highest-ranked one applies.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// A configuration as the merge sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// Configuration id.
    pub id: &'a str,
    /// Larger wins.
    pub priority: i64,
    /// Creation time; newer wins ties.
    pub created_ms: i64,
    /// The `content` object.
    pub content: &'a Value,
}

impl Candidate<'_> {
    fn rank(&self) -> (i64, i64, &str) {
        (self.priority, self.created_ms, self.id)
    }
}

/// What kind of configuration a content object makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    /// `modulesContent` with the full `$edgeAgent.properties.desired`.
    EdgeStandard,
    /// `modulesContent` written with dotted `properties.desired.<path>` keys.
    EdgeLayered,
    /// `deviceContent` (automatic device management).
    Device,
    /// `moduleContent` (automatic module management).
    Module,
    /// Nothing to apply.
    Empty,
}

fn non_empty<'a>(content: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    content
        .get(key)
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
}

/// Classifies a configuration's content.
pub fn content_kind(content: &Value) -> ContentKind {
    if let Some(modules) = non_empty(content, "modulesContent") {
        let agent_is_full = modules
            .get("$edgeAgent")
            .and_then(Value::as_object)
            .is_some_and(|agent| agent.contains_key("properties.desired"));
        if agent_is_full {
            ContentKind::EdgeStandard
        } else {
            ContentKind::EdgeLayered
        }
    } else if non_empty(content, "deviceContent").is_some() {
        ContentKind::Device
    } else if non_empty(content, "moduleContent").is_some() {
        ContentKind::Module
    } else {
        ContentKind::Empty
    }
}

/// Status of a configuration on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Its content is part of what the device got.
    Applied,
    /// It targets the device but another one won.
    Targeted,
}

impl Status {
    /// `Applied` or `Targeted`, as in `configurations.<id>.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "Applied",
            Status::Targeted => "Targeted",
        }
    }
}

/// The result for one device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Status per targeting configuration.
    pub statuses: BTreeMap<String, Status>,
    /// Merged desired properties per module (`$edgeAgent`, `$edgeHub`, custom modules), when an
    /// edge deployment applies.
    pub modules_desired: Option<BTreeMap<String, Map<String, Value>>>,
    /// `(path, value)` writes into the device twin's desired properties from the applied device
    /// configuration.
    pub device_desired: Vec<(Vec<String>, Value)>,
}

/// Writes `value` at a dotted path below `root`, creating objects on the way.
fn set_path(root: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        if let Value::Object(object) = value {
            *root = object;
        }
        return;
    };
    let mut node = root;
    for key in parents {
        let entry = node
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        node = entry.as_object_mut().expect("made an object above");
    }
    node.insert(last.clone(), value);
}

/// Applies one `modulesContent` onto per-module desired properties: `properties.desired`
/// replaces a module's desired properties, `properties.desired.<path>` sets one path.
pub fn apply_modules_content(
    modules: &mut BTreeMap<String, Map<String, Value>>,
    modules_content: &Map<String, Value>,
) {
    for (module_id, entry) in modules_content {
        let Some(entry) = entry.as_object() else {
            continue;
        };
        let desired = modules.entry(module_id.clone()).or_default();
        for (key, value) in entry {
            if key == "properties.desired" {
                *desired = value.as_object().cloned().unwrap_or_default();
            } else if let Some(path) = key.strip_prefix("properties.desired.") {
                let path: Vec<String> = path.split('.').map(str::to_string).collect();
                set_path(desired, &path, value.clone());
            }
        }
    }
}

/// Evaluates the configurations whose target condition matched a device.
pub fn evaluate(targeting: &[Candidate<'_>]) -> Outcome {
    let mut outcome = Outcome::default();
    let of_kind = |kind: ContentKind| {
        targeting
            .iter()
            .filter(move |c| content_kind(c.content) == kind)
    };

    // Edge deployments.
    let standard = of_kind(ContentKind::EdgeStandard).max_by(|a, b| a.rank().cmp(&b.rank()));
    let mut applied: Vec<&Candidate<'_>> = standard.into_iter().collect();
    let mut layers: Vec<&Candidate<'_>> = of_kind(ContentKind::EdgeLayered)
        .filter(|layer| standard.is_none_or(|s| layer.rank() > s.rank()))
        .collect();
    layers.sort_by(|a, b| a.rank().cmp(&b.rank()));
    applied.extend(layers);
    for candidate in of_kind(ContentKind::EdgeStandard).chain(of_kind(ContentKind::EdgeLayered)) {
        let status = if applied.iter().any(|a| a.id == candidate.id) {
            Status::Applied
        } else {
            Status::Targeted
        };
        outcome.statuses.insert(candidate.id.to_string(), status);
    }
    if !applied.is_empty() {
        let mut modules = BTreeMap::new();
        for candidate in &applied {
            if let Some(content) = candidate
                .content
                .get("modulesContent")
                .and_then(Value::as_object)
            {
                apply_modules_content(&mut modules, content);
            }
        }
        // A layered deployment's `"$edgeAgent": {}` adds no module of its own.
        modules.retain(|id, desired| !desired.is_empty() || id.starts_with('$'));
        outcome.modules_desired = Some(modules);
    }

    // Device configurations.
    let winner = of_kind(ContentKind::Device).max_by(|a, b| a.rank().cmp(&b.rank()));
    for candidate in of_kind(ContentKind::Device) {
        let won = winner.is_some_and(|w| w.id == candidate.id);
        let status = if won {
            Status::Applied
        } else {
            Status::Targeted
        };
        outcome.statuses.insert(candidate.id.to_string(), status);
    }
    if let Some(content) = winner
        .and_then(|w| w.content.get("deviceContent"))
        .and_then(Value::as_object)
    {
        for (key, value) in content {
            if key == "properties.desired" {
                outcome.device_desired.push((vec![], value.clone()));
            } else if let Some(path) = key.strip_prefix("properties.desired.") {
                let path = path.split('.').map(str::to_string).collect();
                outcome.device_desired.push((path, value.clone()));
            }
        }
    }
    outcome
}

/// Applies device-configuration writes to desired properties; returns the new values.
pub fn apply_device_writes(
    desired: &Map<String, Value>,
    writes: &[(Vec<String>, Value)],
) -> Map<String, Value> {
    let mut out = desired.clone();
    for (path, value) in writes {
        set_path(&mut out, path, value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn standard(agent_modules: Value) -> Value {
        json!({"modulesContent": {
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": agent_modules}},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {"up": "FROM /messages/* INTO $upstream"}}}
        }})
    }

    fn layered(module: &str, image: &str) -> Value {
        json!({"modulesContent": {
            "$edgeAgent": {format!("properties.desired.modules.{module}"): {"settings": {"image": image}}},
            "$edgeHub": {format!("properties.desired.routes.{module}"): format!("FROM /messages/modules/{module}/* INTO $upstream")},
            module: {"properties.desired": {"interval": 5}}
        }})
    }

    fn cand<'a>(id: &'a str, priority: i64, created_ms: i64, content: &'a Value) -> Candidate<'a> {
        Candidate {
            id,
            priority,
            created_ms,
            content,
        }
    }

    #[test]
    fn kinds_are_told_apart() {
        assert_eq!(
            content_kind(&standard(json!({}))),
            ContentKind::EdgeStandard
        );
        assert_eq!(content_kind(&layered("m", "i")), ContentKind::EdgeLayered);
        assert_eq!(
            content_kind(&json!({"modulesContent": {"$edgeAgent": {}}})),
            ContentKind::EdgeLayered
        );
        assert_eq!(
            content_kind(&json!({"deviceContent": {"properties.desired.x": 1}})),
            ContentKind::Device
        );
        assert_eq!(
            content_kind(&json!({"moduleContent": {"a": 1}})),
            ContentKind::Module
        );
        assert_eq!(
            content_kind(&json!({"modulesContent": {}})),
            ContentKind::Empty
        );
    }

    #[test]
    fn highest_priority_standard_wins() {
        let low = standard(json!({"a": {"settings": {"image": "low"}}}));
        let high = standard(json!({"b": {"settings": {"image": "high"}}}));
        let outcome = evaluate(&[cand("low", 1, 10, &low), cand("high", 5, 1, &high)]);
        assert_eq!(outcome.statuses["high"], Status::Applied);
        assert_eq!(outcome.statuses["low"], Status::Targeted);
        let modules = outcome.modules_desired.unwrap();
        assert_eq!(
            modules["$edgeAgent"]["modules"],
            json!({"b": {"settings": {"image": "high"}}})
        );
    }

    #[test]
    fn newest_wins_a_priority_tie() {
        let old = standard(json!({"old": {}}));
        let new = standard(json!({"new": {}}));
        let outcome = evaluate(&[cand("old", 3, 100, &old), cand("new", 3, 200, &new)]);
        assert_eq!(outcome.statuses["new"], Status::Applied);
        assert_eq!(outcome.statuses["old"], Status::Targeted);
    }

    #[test]
    fn layers_merge_on_top_in_priority_order() {
        let base = standard(json!({"base": {"settings": {"image": "b"}}}));
        let l1 = layered("sensor", "v1");
        let l2 = layered("sensor", "v2");
        let other = layered("monitor", "m");
        let outcome = evaluate(&[
            cand("l2", 20, 1, &l2),
            cand("base", 0, 1, &base),
            cand("l1", 10, 5, &l1),
            cand("mon", 15, 1, &other),
        ]);
        for id in ["base", "l1", "l2", "mon"] {
            assert_eq!(outcome.statuses[id], Status::Applied, "{id}");
        }
        let modules = outcome.modules_desired.unwrap();
        let agent_modules = &modules["$edgeAgent"]["modules"];
        assert_eq!(agent_modules["base"]["settings"]["image"], "b");
        assert_eq!(
            agent_modules["sensor"]["settings"]["image"], "v2",
            "higher priority wins the clash"
        );
        assert_eq!(agent_modules["monitor"]["settings"]["image"], "m");
        assert_eq!(modules["$edgeAgent"]["schemaVersion"], "1.1");
        assert_eq!(
            modules["$edgeHub"]["routes"]["sensor"],
            "FROM /messages/modules/sensor/* INTO $upstream"
        );
        assert_eq!(
            modules["$edgeHub"]["routes"]["up"],
            "FROM /messages/* INTO $upstream"
        );
        assert_eq!(
            modules["sensor"],
            *json!({"interval": 5}).as_object().unwrap()
        );
    }

    #[test]
    fn a_layer_below_the_standard_is_only_targeted() {
        let base = standard(json!({}));
        let layer = layered("sensor", "v1");
        let outcome = evaluate(&[cand("base", 10, 1, &base), cand("layer", 5, 2, &layer)]);
        assert_eq!(outcome.statuses["layer"], Status::Targeted);
        let modules = outcome.modules_desired.unwrap();
        assert_eq!(modules["$edgeAgent"]["modules"], json!({}));
        assert!(!modules.contains_key("sensor"));
    }

    #[test]
    fn layers_alone_apply_onto_an_empty_base() {
        let layer = layered("sensor", "v1");
        let outcome = evaluate(&[cand("layer", 5, 2, &layer)]);
        assert_eq!(outcome.statuses["layer"], Status::Applied);
        let modules = outcome.modules_desired.unwrap();
        assert_eq!(
            modules["$edgeAgent"]["modules"]["sensor"]["settings"]["image"],
            "v1"
        );
    }

    #[test]
    fn nothing_targeting_changes_nothing() {
        assert_eq!(evaluate(&[]), Outcome::default());
    }

    #[test]
    fn device_configurations_pick_one_and_write_paths() {
        let a = json!({"deviceContent": {"properties.desired.firmware": {"version": "1"}}});
        let b = json!({"deviceContent": {"properties.desired.firmware.version": "2"}});
        let outcome = evaluate(&[cand("a", 1, 1, &a), cand("b", 2, 1, &b)]);
        assert_eq!(outcome.statuses["b"], Status::Applied);
        assert_eq!(outcome.statuses["a"], Status::Targeted);
        assert!(outcome.modules_desired.is_none());
        let current = json!({"firmware": {"version": "0", "url": "x"}, "other": 1});
        let out = apply_device_writes(current.as_object().unwrap(), &outcome.device_desired);
        assert_eq!(
            Value::Object(out),
            json!({"firmware": {"version": "2", "url": "x"}, "other": 1})
        );
    }
}
