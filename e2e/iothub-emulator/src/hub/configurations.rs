//! Configurations (automatic IoT Edge deployments and device configurations), per-device
//! deployments (applyConfigurationContent) and their evaluation against the device twins.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use super::devices::precondition_failed;
use super::{Hub, IfMatch, Reply};
use crate::clock::format_timestamp;
use crate::deployment::{
    Candidate, ContentKind, apply_device_writes, apply_modules_content, content_kind, evaluate,
};
use crate::error::{ErrorCode, HubError};
use crate::query::{Condition, Literals, parse_condition_with, parse_query_with};
use crate::registry::{Fields, SYSTEM_MODULES};
use crate::twin::{twin_key_ok, twin_key_rule, validate_keys};

/// Longest configuration label key or value.
pub const MAX_LABEL_LENGTH: usize = 128;
/// Characters a label may hold besides ASCII letters and digits (`$` is reserved).
const LABEL_PUNCTUATION: &str = "-:.+%_#*?!(),=@;'";

/// Metrics as one evaluation computed them: `systemMetrics.results` and `metrics.results`.
#[derive(Debug, Clone)]
struct Evaluated {
    system: Value,
    custom: Map<String, Value>,
}

/// A stored configuration.
#[derive(Debug, Clone)]
pub struct Configuration {
    /// Configuration id.
    pub id: String,
    schema_version: String,
    labels: Map<String, Value>,
    /// Content, immutable after creation (nulls and empty sections removed).
    content: Value,
    kind: ContentKind,
    target_condition: String,
    /// Parsed target condition; `None` when empty (targets no device).
    condition: Option<Condition>,
    priority: i64,
    created_ms: i64,
    updated_ms: i64,
    metric_queries: Map<String, Value>,
    version: u64,
    /// Metrics of the last scheduled evaluation (`--config-eval-interval-secs`).
    evaluated: Option<Evaluated>,
}

impl Configuration {
    fn etag(&self) -> String {
        BASE64.encode(self.version.to_string())
    }

    fn is_edge(&self) -> bool {
        matches!(
            self.kind,
            ContentKind::EdgeStandard | ContentKind::EdgeLayered
        )
    }

    /// Whether the configuration targets a device (edge deployments only edge devices).
    fn targets(&self, twin: &Value, is_edge_device: bool) -> bool {
        let Some(condition) = &self.condition else {
            return false;
        };
        match self.kind {
            ContentKind::EdgeStandard | ContentKind::EdgeLayered => {
                is_edge_device && condition.matches(twin)
            }
            ContentKind::Device => condition.matches(twin),
            // Module configurations target module twins; the emulator does not apply them.
            ContentKind::Module | ContentKind::Empty => false,
        }
    }
}

/// Content without `null` or empty sections, the form kept and compared for immutability.
fn normalize_content(content: &Map<String, Value>) -> Value {
    Value::Object(
        content
            .iter()
            .filter(|(_, v)| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

fn content_error(message: String) -> HubError {
    HubError::new(ErrorCode::InvalidConfigurationContent, message)
}

/// What content checks apply beyond the structure.
#[derive(Debug, Clone, Copy)]
struct ContentRules {
    /// Twin key rules on every key that becomes a desired property (`--check-twin-keys`).
    twin_keys: bool,
    /// Custom modules one deployment may carry (0: no limit).
    max_modules: usize,
}

/// Checks the keys a content entry writes into desired properties: the `<path>` segments of a
/// `properties.desired.<path>` key and every key inside its value.
fn check_content_keys(section: &str, key: &str, value: &Value) -> Result<(), HubError> {
    let path = key.strip_prefix("properties.desired").unwrap_or(key);
    let segments = path.strip_prefix('.').map(|p| p.split('.'));
    for segment in segments.into_iter().flatten() {
        if !twin_key_ok(segment, true) {
            return Err(content_error(format!(
                "{section} key '{}' has the property name '{}': {}",
                key.escape_default(),
                segment.escape_default(),
                twin_key_rule(true)
            )));
        }
    }
    if let Some(object) = value.as_object() {
        validate_keys(&format!("{section}.{key}"), object, true).map_err(content_error)?;
    }
    Ok(())
}

/// The custom modules a `modulesContent` deploys: the entries of `$edgeAgent`'s
/// `properties.desired.modules` and every `properties.desired.modules.<name>` key.
fn deployed_modules(modules: &Map<String, Value>) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let Some(agent) = modules.get("$edgeAgent").and_then(Value::as_object) else {
        return names;
    };
    for (key, value) in agent {
        let listed = match key.as_str() {
            "properties.desired" => value.get("modules"),
            "properties.desired.modules" => Some(value),
            _ => None,
        };
        if let Some(listed) = listed.and_then(Value::as_object) {
            names.extend(listed.keys().cloned());
        } else if let Some(rest) = key.strip_prefix("properties.desired.modules.")
            && let Some(name) = rest.split('.').next().filter(|n| !n.is_empty())
        {
            names.insert(name.to_string());
        }
    }
    names
}

/// Checks a `modulesContent`: `$edgeAgent` present, every module entry an object whose keys are
/// `properties.desired` (an object) or `properties.desired.<path>`, and the `rules`.
fn validate_modules_content(
    modules: &Map<String, Value>,
    rules: ContentRules,
) -> Result<(), HubError> {
    if !modules.contains_key("$edgeAgent") {
        return Err(content_error(
            "modulesContent must include $edgeAgent (a layered deployment includes \"$edgeAgent\": {})"
                .into(),
        ));
    }
    for (module, entry) in modules {
        let Some(entry) = entry.as_object() else {
            return Err(content_error(format!(
                "modulesContent.{module} must be an object of \"properties.desired\" entries"
            )));
        };
        for (key, value) in entry {
            let full = key == "properties.desired";
            let path = key
                .strip_prefix("properties.desired.")
                .is_some_and(|p| !p.is_empty() && !p.split('.').any(str::is_empty));
            if !full && !path {
                return Err(content_error(format!(
                    "modulesContent.{module} has key '{key}'; use \"properties.desired\" or \"properties.desired.<path>\""
                )));
            }
            if full && !value.is_object() {
                return Err(content_error(format!(
                    "modulesContent.{module}.properties.desired must be an object"
                )));
            }
            if rules.twin_keys {
                check_content_keys(&format!("modulesContent.{module}"), key, value)?;
            }
        }
    }
    let deployed = deployed_modules(modules);
    if rules.max_modules > 0 && deployed.len() > rules.max_modules {
        return Err(content_error(format!(
            "the deployment has {} modules; IoT Hub allows at most {} modules per deployment (edgeAgent and edgeHub not counted): split it into layered deployments",
            deployed.len(),
            rules.max_modules
        )));
    }
    Ok(())
}

/// Checks configuration content and tells its kind.
fn validate_content(
    content: &Map<String, Value>,
    rules: ContentRules,
) -> Result<ContentKind, HubError> {
    let normalized = normalize_content(content);
    let sections: Vec<&String> = normalized
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    if sections.len() > 1 {
        return Err(content_error(format!(
            "content mixes {}; a configuration has either modulesContent (IoT Edge) or deviceContent or moduleContent",
            sections
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        )));
    }
    for (key, value) in content {
        if !value.is_null() && !value.is_object() {
            return Err(content_error(format!("content.{key} must be an object")));
        }
    }
    let kind = content_kind(&normalized);
    match kind {
        ContentKind::Empty => Err(content_error(
            "The content provided for configuration is empty; give modulesContent (IoT Edge deployment), deviceContent or moduleContent".into(),
        )),
        ContentKind::EdgeStandard | ContentKind::EdgeLayered => {
            let modules = normalized["modulesContent"].as_object().cloned().unwrap_or_default();
            validate_modules_content(&modules, rules)?;
            Ok(kind)
        }
        ContentKind::Device | ContentKind::Module => {
            let section = if kind == ContentKind::Device { "deviceContent" } else { "moduleContent" };
            let entries = normalized[section].as_object().cloned().unwrap_or_default();
            for (key, value) in &entries {
                if key != "properties.desired" && !key.starts_with("properties.desired.") {
                    return Err(content_error(format!(
                        "{section} has key '{key}'; use \"properties.desired.<path>\""
                    )));
                }
                if rules.twin_keys {
                    check_content_keys(section, key, value)?;
                }
            }
            Ok(kind)
        }
    }
}

fn validate_configuration_id(id: &str, strict: bool) -> Result<(), HubError> {
    const EXTRA: &str = "-:+%_#*?!(),=@;$'";
    let char_ok = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || EXTRA.contains(c)
            || (!strict && c.is_ascii_uppercase())
    };
    if id.is_empty() || id.len() > 128 || !id.chars().all(char_ok) {
        return Err(HubError::bad_request(format!(
            "configuration id '{}' is invalid: use 1-128 lowercase letters, digits and {EXTRA}",
            id.escape_default()
        )));
    }
    Ok(())
}

/// Labels: keys and values up to 128 ASCII letters, digits and `-:.+%_#*?!(),=@;'` (`$`
/// reserved; azure-iot-sdk-node `service/src/configuration.ts`), keys not empty.
fn check_labels(labels: &Map<String, Value>) -> Result<(), HubError> {
    let char_ok = |c: char| c.is_ascii_alphanumeric() || LABEL_PUNCTUATION.contains(c);
    let text_ok = |t: &str| t.chars().count() <= MAX_LABEL_LENGTH && t.chars().all(char_ok);
    for (key, value) in labels {
        let value = value.as_str().unwrap_or_default();
        let (what, text) = if key.is_empty() || !text_ok(key) {
            ("key", key.as_str())
        } else if !text_ok(value) {
            ("value", value)
        } else {
            continue;
        };
        return Err(HubError::bad_request(format!(
            "label {what} '{}' is invalid: label keys and values are at most {MAX_LABEL_LENGTH} ASCII letters, digits and {LABEL_PUNCTUATION} ($ is reserved; '/' is not allowed)",
            text.escape_default()
        )));
    }
    Ok(())
}

fn parse_target_condition(text: &str, literals: Literals) -> Result<Option<Condition>, HubError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    parse_condition_with(text, literals).map(Some).map_err(|e| {
        // A character a target condition may not hold is refused as a bad argument (Azure
        // answered a double-quoted condition with ArgumentInvalid, azure-iot-cli-extension#101).
        let code = if e.literal_rule {
            ErrorCode::ArgumentInvalid
        } else {
            ErrorCode::InvalidConfigurationTargetCondition
        };
        HubError::new(
            code,
            format!(
                "targetCondition '{text}' is invalid at character {}: {}",
                e.position, e.message
            ),
        )
    })
}

fn check_metric_queries(queries: &Map<String, Value>, literals: Literals) -> Result<(), HubError> {
    for (name, query) in queries {
        let text = query.as_str().ok_or_else(|| {
            HubError::bad_request(format!("metrics.queries.{name} must be a string"))
        })?;
        parse_query_with(text, literals).map_err(|e| {
            HubError::new(
                ErrorCode::InvalidConfigurationCustomMetricsQuery,
                format!(
                    "metrics query '{name}' is invalid at character {}: {}",
                    e.position, e.message
                ),
            )
        })?;
    }
    Ok(())
}

/// The updatable fields of a Configuration body.
struct ConfigurationInput {
    schema_version: Option<String>,
    labels: Option<Map<String, Value>>,
    content: Option<Map<String, Value>>,
    target_condition: Option<String>,
    priority: Option<i64>,
    metric_queries: Option<Map<String, Value>>,
}

fn parse_configuration(
    id: &str,
    body: &Value,
    strict_labels: bool,
) -> Result<ConfigurationInput, HubError> {
    let fields = Fields::of(body, "Configuration")?;
    if let Some(body_id) = fields.string("id")?
        && body_id != id
    {
        return Err(HubError::bad_request(format!(
            "id '{body_id}' in the body differs from '{id}' in the URL"
        )));
    }
    let labels = fields.object("labels")?.cloned();
    if let Some(labels) = &labels
        && let Some((key, _)) = labels.iter().find(|(_, v)| !v.is_string())
    {
        return Err(HubError::bad_request(format!(
            "labels.{key} must be a string"
        )));
    }
    if strict_labels && let Some(labels) = &labels {
        check_labels(labels)?;
    }
    let priority = fields.integer("priority")?;
    if let Some(p) = priority
        && (p < 0 || p > i64::from(i32::MAX))
    {
        return Err(HubError::bad_request(format!(
            "priority {p} of configuration {id} is invalid: use a non-negative 32-bit integer"
        )));
    }
    let metric_queries = match fields.nested("metrics")? {
        Some(metrics) => metrics.object("queries")?.cloned(),
        None => None,
    };
    Ok(ConfigurationInput {
        schema_version: fields.string("schemaVersion")?,
        labels,
        content: fields.object("content")?.cloned(),
        target_condition: fields.string("targetCondition")?,
        priority,
        metric_queries,
    })
}

impl Hub {
    /// `PUT /configurations/{id}`: create without If-Match, update (everything but content)
    /// with it.
    pub fn put_configuration(
        &mut self,
        id: &str,
        body: &Value,
        if_match: &IfMatch,
        now_ms: i64,
    ) -> Result<Reply, HubError> {
        validate_configuration_id(id, self.strict())?;
        let input = parse_configuration(id, body, self.realism().check_labels)?;
        let condition_literals = self.condition_literals();
        let condition = input
            .target_condition
            .as_deref()
            .map(|text| parse_target_condition(text, condition_literals))
            .transpose()?;
        if let Some(queries) = &input.metric_queries {
            check_metric_queries(queries, self.query_literals())?;
        }
        let created = match (self.configurations.get(id), if_match) {
            (None, IfMatch::Absent) => {
                let max = self.realism().max_configurations;
                if self.configurations.len() >= max {
                    return Err(HubError::new(
                        ErrorCode::ConfigurationCountLimitExceeded,
                        format!(
                            "the hub already has {max} configurations, the most it can hold (layered deployments count too); delete unused ones before creating {id}"
                        ),
                    ));
                }
                let content = input
                    .content
                    .ok_or_else(|| content_error(format!("configuration {id} has no content")))?;
                let kind = validate_content(&content, self.content_rules())?;
                let configuration = Configuration {
                    id: id.to_string(),
                    schema_version: input.schema_version.unwrap_or_else(|| "1.0".into()),
                    labels: input.labels.unwrap_or_default(),
                    content: normalize_content(&content),
                    kind,
                    target_condition: input.target_condition.unwrap_or_default(),
                    condition: condition.flatten(),
                    priority: input.priority.unwrap_or(0),
                    created_ms: now_ms,
                    updated_ms: now_ms,
                    metric_queries: input.metric_queries.unwrap_or_default(),
                    version: 1,
                    evaluated: None,
                };
                self.configurations.insert(id.to_string(), configuration);
                true
            }
            (Some(_), IfMatch::Absent) => {
                return Err(HubError::new(
                    ErrorCode::ConfigurationAlreadyExists,
                    format!(
                        "configuration {id} already exists; to update it send If-Match with its quoted etag or \"*\" (content cannot change: create a new configuration instead)"
                    ),
                ));
            }
            (None, _) => return Err(configuration_not_found(id)),
            (Some(existing), precondition) => {
                if !precondition.admits(&existing.etag()) {
                    return Err(precondition_failed(
                        "Configuration",
                        &existing.etag(),
                        precondition,
                    ));
                }
                if let Some(content) = &input.content
                    && normalize_content(content) != existing.content
                {
                    return Err(HubError::new(
                        ErrorCode::CannotModifyImmutableConfigurationContent,
                        format!(
                            "the content of configuration {id} cannot be changed; create a configuration with a new id and delete this one"
                        ),
                    ));
                }
                let existing = self.configurations.get_mut(id).expect("checked above");
                if let Some(condition) = condition {
                    existing.condition = condition;
                    existing.target_condition = input.target_condition.unwrap_or_default();
                }
                if let Some(priority) = input.priority {
                    existing.priority = priority;
                }
                if let Some(labels) = input.labels {
                    existing.labels = labels;
                }
                if let Some(queries) = input.metric_queries {
                    existing.metric_queries = queries;
                }
                if let Some(version) = input.schema_version {
                    existing.schema_version = version;
                }
                existing.updated_ms = now_ms;
                existing.version += 1;
                false
            }
        };
        if !self.evaluates_on_schedule() {
            self.reevaluate_all(now_ms);
        } else if created {
            // Azure evaluates a new configuration at once, later changes at the next interval.
            self.evaluate_configurations(now_ms);
        }
        self.get_configuration(id)
    }

    fn content_rules(&self) -> ContentRules {
        ContentRules {
            twin_keys: self.realism().check_twin_keys,
            max_modules: self.realism().max_modules_per_deployment,
        }
    }

    /// One evaluation of every automatic configuration: targeting and applied content on every
    /// device, then the metrics `GET /configurations` reports until the next evaluation.
    pub(super) fn evaluate_configurations(&mut self, now_ms: i64) {
        self.evaluations += 1;
        self.reevaluate_all(now_ms);
        let metrics: Vec<(String, Evaluated)> = self
            .configurations
            .values()
            .map(|c| (c.id.clone(), self.compute_metrics(c)))
            .collect();
        for (id, evaluated) in metrics {
            if let Some(configuration) = self.configurations.get_mut(&id) {
                configuration.evaluated = Some(evaluated);
            }
        }
    }

    /// `GET /configurations/{id}`, with metrics computed from the twins.
    pub fn get_configuration(&self, id: &str) -> Result<Reply, HubError> {
        let configuration = self
            .configurations
            .get(id)
            .ok_or_else(|| configuration_not_found(id))?;
        Ok(Reply::ok(self.render_configuration(configuration)).with_etag(configuration.etag()))
    }

    /// `GET /configurations?top=N` (no paging, as in Azure).
    pub fn list_configurations(&self, top: Option<i64>) -> Reply {
        let max = self.realism().max_configurations.max(1);
        let top = top
            .filter(|t| *t > 0)
            .map_or(max, |t| usize::try_from(t).unwrap_or(max));
        let list = self
            .configurations
            .values()
            .take(top)
            .map(|c| self.render_configuration(c))
            .collect();
        Reply::ok(Value::Array(list))
    }

    /// `DELETE /configurations/{id}`. Devices keep what was deployed (as in Azure).
    pub fn delete_configuration(
        &mut self,
        id: &str,
        if_match: &IfMatch,
        now_ms: i64,
    ) -> Result<Reply, HubError> {
        let configuration = self
            .configurations
            .get(id)
            .ok_or_else(|| configuration_not_found(id))?;
        if !if_match.admits(&configuration.etag()) {
            return Err(precondition_failed(
                "Configuration",
                &configuration.etag(),
                if_match,
            ));
        }
        self.configurations.remove(id);
        if !self.evaluates_on_schedule() {
            self.reevaluate_all(now_ms);
        }
        Ok(Reply::no_content())
    }

    /// `POST /configurations/testQueries`.
    pub fn test_queries(&self, body: &Value) -> Result<Reply, HubError> {
        let fields = Fields::of(body, "ConfigurationQueriesTestInput")?;
        let target_error = match fields.string("targetCondition")? {
            Some(text) => parse_target_condition(&text, self.condition_literals())
                .err()
                .map(|e| e.message)
                .unwrap_or_default(),
            None => String::new(),
        };
        let mut metric_errors = Map::new();
        if let Some(queries) = fields.object("customMetricQueries")? {
            for (name, query) in queries {
                let text = query.as_str().unwrap_or_default();
                if let Err(e) = parse_query_with(text, self.query_literals()) {
                    metric_errors.insert(
                        name.clone(),
                        format!("invalid at character {}: {}", e.position, e.message).into(),
                    );
                }
            }
        }
        Ok(Reply::ok(json!({
            "targetConditionError": target_error,
            "customMetricQueryErrors": metric_errors,
        })))
    }

    /// `POST /devices/{id}/applyConfigurationContent`: a per-device deployment (204).
    pub fn apply_configuration_content(
        &mut self,
        device_id: &str,
        body: &Value,
        now_ms: i64,
    ) -> Result<Reply, HubError> {
        let fields = Fields::of(body, "ConfigurationContent")?;
        if fields
            .object("deviceContent")?
            .is_some_and(|c| !c.is_empty())
        {
            return Err(content_error(
                "The content provided for configuration is invalid: applyConfigurationContent takes modulesContent, not deviceContent".into(),
            ));
        }
        let modules_content = fields
            .object("modulesContent")?
            .filter(|m| !m.is_empty())
            .cloned()
            .ok_or_else(|| content_error("Modules content is mandatory".into()))?;
        validate_modules_content(&modules_content, self.content_rules())?;
        let device = self
            .devices
            .get(device_id)
            .ok_or_else(|| HubError::device_not_found(device_id))?;
        if !device.iot_edge {
            return Err(HubError::bad_request(format!(
                "device {device_id} is not an IoT Edge device; module content applies only to IoT Edge devices"
            )));
        }
        let automatic: Vec<&str> = device
            .twin
            .configurations
            .keys()
            .filter(|id| {
                self.configurations
                    .get(*id)
                    .is_some_and(Configuration::is_edge)
            })
            .map(String::as_str)
            .collect();
        if !automatic.is_empty() {
            return Err(HubError::new(
                ErrorCode::InvalidOperation,
                format!(
                    "device {device_id} is targeted by automatic deployment(s) {}; per-device and automatic deployments cannot be mixed on a device: change their target conditions or deploy through them",
                    automatic.join(", ")
                ),
            ));
        }
        let mut modules = BTreeMap::new();
        apply_modules_content(&mut modules, &modules_content);
        let device = self.devices.get_mut(device_id).expect("checked above");
        for (module_id, desired) in &modules {
            if let Some(module) = device.modules.get_mut(module_id)
                && module.twin.desired.replace(desired.clone(), now_ms)
            {
                module.twin.touch_service_side();
            }
        }
        device.deployed_desired = modules;
        device.per_device_content = true;
        self.mark_changed(device_id);
        Ok(Reply::no_content())
    }

    /// Re-evaluates every configuration against one device and writes the result into its
    /// twins: `configurations.<id>.status` and the merged desired properties.
    pub(super) fn reevaluate_device(&mut self, device_id: &str, now_ms: i64) {
        let Some(device) = self.devices.get(device_id) else {
            return;
        };
        if self.configurations.is_empty() && device.twin.configurations.is_empty() {
            // Nothing targets it and nothing did: skip rendering (keeps bulk creates fast).
            return;
        }
        let twin = device.render_twin();
        let candidates: Vec<Candidate<'_>> = self
            .configurations
            .values()
            .filter(|c| c.targets(&twin, device.iot_edge))
            .map(|c| Candidate {
                id: &c.id,
                priority: c.priority,
                created_ms: c.created_ms,
                content: &c.content,
            })
            .collect();
        let outcome = evaluate(&candidates);
        let statuses: BTreeMap<String, String> = outcome
            .statuses
            .iter()
            .map(|(id, status)| (id.clone(), status.as_str().to_string()))
            .collect();
        let edge_statuses: BTreeMap<String, String> = statuses
            .iter()
            .filter(|(id, _)| {
                self.configurations
                    .get(*id)
                    .is_some_and(Configuration::is_edge)
            })
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        self.mark_changed(device_id);
        let device = self.devices.get_mut(device_id).expect("looked up above");
        device.twin.configurations = statuses;
        for name in SYSTEM_MODULES {
            if let Some(module) = device.modules.get_mut(name) {
                module.twin.configurations = edge_statuses.clone();
            }
        }
        if let Some(modules) = outcome.modules_desired {
            device.per_device_content = false;
            for (module_id, desired) in &modules {
                if let Some(module) = device.modules.get_mut(module_id)
                    && module.twin.desired.replace(desired.clone(), now_ms)
                {
                    module.twin.touch_service_side();
                }
            }
            device.deployed_desired = modules;
        }
        if !outcome.device_desired.is_empty() {
            let desired =
                apply_device_writes(device.twin.desired.values(), &outcome.device_desired);
            if device.twin.desired.replace(desired, now_ms) {
                device.twin.touch_service_side();
            }
        }
    }

    /// Re-evaluates all devices (after a configuration changed).
    pub(super) fn reevaluate_all(&mut self, now_ms: i64) {
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        for id in ids {
            self.reevaluate_device(&id, now_ms);
        }
        self.mark_all_changed();
    }

    /// `systemMetrics.results` and `metrics.results` of a configuration from the twins now.
    fn compute_metrics(&self, c: &Configuration) -> Evaluated {
        let mut targeted = 0_u64;
        let mut applied = 0_u64;
        let mut succeeded = 0_u64;
        let mut failed = 0_u64;
        for device in self.devices.values() {
            let status = device.twin.configurations.get(&c.id).map(String::as_str);
            if status.is_some() {
                targeted += 1;
            }
            if status != Some("Applied") {
                continue;
            }
            applied += 1;
            if !c.is_edge() {
                continue;
            }
            let Some(agent) = device.modules.get("$edgeAgent") else {
                continue;
            };
            let reported = agent.twin.reported.values();
            let caught_up = reported.get("lastDesiredVersion").and_then(Value::as_i64)
                == Some(agent.twin.desired.version());
            let code = reported
                .get("lastDesiredStatus")
                .and_then(|s| s.get("code"))
                .and_then(Value::as_i64);
            match (caught_up, code) {
                (true, Some(200)) => succeeded += 1,
                (true, Some(_)) => failed += 1,
                _ => {}
            }
        }
        let system = if c.is_edge() {
            json!({"targetedCount": targeted, "appliedCount": applied,
                   "reportedSuccessfulCount": succeeded, "reportedFailedCount": failed})
        } else {
            json!({"targetedCount": targeted, "appliedCount": applied})
        };
        let literals = self.query_literals();
        let custom: Map<String, Value> = c
            .metric_queries
            .iter()
            .filter_map(|(name, query)| {
                let query = parse_query_with(query.as_str()?, literals).ok()?;
                let rows = query.execute(&self.twin_documents(query.collection()));
                Some((name.clone(), Value::from(rows.len())))
            })
            .collect();
        Evaluated { system, custom }
    }

    /// A configuration as `GET /configurations/{id}` answers it. With a scheduled evaluation
    /// the metrics are those of the last evaluation, otherwise of the twins now.
    fn render_configuration(&self, c: &Configuration) -> Value {
        let evaluated = match (&c.evaluated, self.evaluates_on_schedule()) {
            (Some(evaluated), true) => evaluated.clone(),
            _ => self.compute_metrics(c),
        };
        let condition = &c.target_condition;
        let queries = if c.is_edge() {
            let applied_query = format!(
                "select deviceId from devices.modules where moduleId = '$edgeAgent' and configurations.[[{}]].status = 'Applied'",
                c.id
            );
            json!({
                "targetedCount": format!("select deviceId from devices where capabilities.iotEdge = true and {condition}"),
                "appliedCount": applied_query,
                "reportedSuccessfulCount": format!("{applied_query} and properties.desired.$version = properties.reported.lastDesiredVersion and properties.reported.lastDesiredStatus.code = 200"),
                "reportedFailedCount": format!("{applied_query} and properties.desired.$version = properties.reported.lastDesiredVersion and properties.reported.lastDesiredStatus.code != 200"),
            })
        } else {
            json!({
                "targetedCount": format!("select deviceId from devices where {condition}"),
                "appliedCount": format!("select deviceId from devices where configurations.[[{}]].status = 'Applied'", c.id),
            })
        };
        let mut content = c.content.clone();
        if let Some(sections) = content.as_object_mut() {
            for section in ["modulesContent", "moduleContent", "deviceContent"] {
                sections.entry(section).or_insert_with(|| json!({}));
            }
        }
        json!({
            "id": c.id,
            "schemaVersion": c.schema_version,
            "labels": c.labels,
            "content": content,
            "targetCondition": c.target_condition,
            "createdTimeUtc": format_timestamp(c.created_ms),
            "lastUpdatedTimeUtc": format_timestamp(c.updated_ms),
            "priority": c.priority,
            "systemMetrics": {"results": evaluated.system, "queries": queries},
            "metrics": {"results": evaluated.custom, "queries": c.metric_queries},
            "etag": c.etag(),
        })
    }
}

fn configuration_not_found(id: &str) -> HubError {
    HubError::new(
        ErrorCode::ConfigurationNotFound,
        format!("Configuration {id} not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const RULES: ContentRules = ContentRules {
        twin_keys: true,
        max_modules: 50,
    };

    #[test]
    fn content_validation() {
        let standard = obj(
            json!({"modulesContent": {"$edgeAgent": {"properties.desired": {}}, "$edgeHub": {"properties.desired": {}}}}),
        );
        assert_eq!(
            validate_content(&standard, RULES).unwrap(),
            ContentKind::EdgeStandard
        );
        let layered = obj(
            json!({"modulesContent": {"$edgeAgent": {"properties.desired.modules.m": {}}}, "deviceContent": {}}),
        );
        assert_eq!(
            validate_content(&layered, RULES).unwrap(),
            ContentKind::EdgeLayered
        );
        for bad in [
            json!({}),
            json!({"modulesContent": {"$edgeHub": {"properties.desired": {}}}}),
            json!({"modulesContent": {"$edgeAgent": {"desired": {}}}}),
            json!({"modulesContent": {"$edgeAgent": {"properties.desired": "x"}}}),
            json!({"modulesContent": {"$edgeAgent": {}}, "deviceContent": {"properties.desired.x": 1}}),
            json!({"deviceContent": {"tags.x": 1}}),
        ] {
            let err = validate_content(&obj(bad.clone()), RULES).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidConfigurationContent, "{bad}");
        }
    }

    #[test]
    fn labels_follow_azures_character_rule() {
        let ok = obj(
            json!({"HostPlatform": "Linux", "version": "3.0.1", "a-b:c.d+e%f_g#h*i?j!k(l)m,n=o@p;q'r": ""}),
        );
        assert!(check_labels(&ok).is_ok());
        for bad in [
            json!({"edgehierarchy.dev/uid": "u"}),
            json!({"$reserved": "x"}),
            json!({"k": "a/b"}),
            json!({"k": "with space"}),
            json!({"": "empty key"}),
            json!({"k": "é"}),
            json!({"k": "x".repeat(129)}),
            json!({"x".repeat(129): "v"}),
        ] {
            let err = check_labels(&obj(bad.clone())).unwrap_err();
            assert_eq!(err.code, ErrorCode::ArgumentInvalid, "{bad}");
        }
        assert!(check_labels(&obj(json!({"k": "x".repeat(128)}))).is_ok());
    }

    fn edge_content(modules: usize) -> Map<String, Value> {
        let listed: Map<String, Value> = (0..modules)
            .map(|i| (format!("m{i}"), json!({"settings": {"image": "x"}})))
            .collect();
        obj(json!({"modulesContent": {
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": listed}},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1"}}}}))
    }

    #[test]
    fn a_deployment_holds_at_most_the_module_limit() {
        assert!(validate_content(&edge_content(50), RULES).is_ok());
        let err = validate_content(&edge_content(51), RULES).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidConfigurationContent);
        assert!(err.message.contains("51 modules"), "{}", err.message);
        let unlimited = ContentRules {
            max_modules: 0,
            ..RULES
        };
        assert!(validate_content(&edge_content(51), unlimited).is_ok());
        // Layered modules count by their `properties.desired.modules.<name>` keys.
        let mut agent = Map::new();
        for i in 0..51 {
            agent.insert(
                format!("properties.desired.modules.m{i}"),
                json!({"settings": {"image": "x"}}),
            );
            agent.insert(format!("properties.desired.modules.m{i}.env"), json!({}));
        }
        let layered = obj(json!({"modulesContent": {"$edgeAgent": agent}}));
        let names = deployed_modules(layered["modulesContent"].as_object().unwrap());
        assert_eq!(names.len(), 51);
        assert!(validate_content(&layered, RULES).is_err());
    }

    #[test]
    fn content_keys_follow_the_twin_key_rules() {
        for bad in [
            json!({"modulesContent": {"$edgeAgent": {"properties.desired.modules.a#b": {}}}}),
            json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"modules": {"m": {"env": {"A B": 1}}}}}}}),
            json!({"deviceContent": {"properties.desired.x": {"$y": 1}}}),
            json!({"deviceContent": {"properties.desired.x#y": 1}}),
        ] {
            let err = validate_content(&obj(bad.clone()), RULES).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidConfigurationContent, "{bad}");
        }
        let lenient = ContentRules {
            twin_keys: false,
            ..RULES
        };
        assert!(
            validate_content(
                &obj(json!({"deviceContent": {"properties.desired.x#y": 1}})),
                lenient
            )
            .is_ok()
        );
        // Values are free text; `$upstream` in a route is a value.
        assert!(
            validate_content(
                &obj(json!({"modulesContent": {"$edgeAgent": {"properties.desired": {}},
                    "$edgeHub": {"properties.desired": {"routes": {"up": "FROM /messages/* INTO $upstream"}}}}})),
                RULES
            )
            .is_ok()
        );
    }

    #[test]
    fn target_condition_literal_rules_are_bad_arguments() {
        let tc = Literals::TargetCondition;
        assert!(
            parse_target_condition("deviceId='operator''sDevice'", tc)
                .unwrap()
                .is_some()
        );
        for bad in [r"deviceId='a\'b'", r#"tags.env = "prod""#] {
            let err = parse_target_condition(bad, tc).unwrap_err();
            assert_eq!(err.code, ErrorCode::ArgumentInvalid, "{bad}");
        }
        let err = parse_target_condition("tags.env = ", tc).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidConfigurationTargetCondition);
        assert!(parse_target_condition(r#"tags.env = "prod""#, Literals::Lenient).is_ok());
    }

    #[test]
    fn configuration_ids() {
        assert!(validate_configuration_id("top-layer-1a2b3c4d", true).is_ok());
        assert!(validate_configuration_id("Upper", false).is_ok());
        assert!(validate_configuration_id("Upper", true).is_err());
        assert!(validate_configuration_id("", false).is_err());
        assert!(validate_configuration_id("a/b", false).is_err());
    }
}
