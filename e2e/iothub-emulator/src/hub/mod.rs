//! The hub's in-memory state and the operations on it. Everything here is synchronous and free
//! of HTTP: the server parses a request, calls one method, and renders the [`Reply`].

mod bulk;
mod configurations;
mod device_facing;
mod devices;
mod query_view;
mod twin_query;
mod twins;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

pub use bulk::bulk_units;
pub use configurations::Configuration;

use crate::clock::dotnet_ticks;
use crate::query::Literals;
use crate::realism::Realism;
use crate::registry::Device;
use crate::scopes::{Node, Topology};
use query_view::QueryView;

/// What an operation answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<Value>,
    /// Value for the `ETag` header (unquoted; the server quotes it).
    pub etag: Option<String>,
    /// Extra headers (paging, item type, error code of a bulk failure).
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn ok(body: Value) -> Self {
        Self::json(200, body)
    }

    /// A status with a JSON body.
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            etag: None,
            headers: vec![],
        }
    }

    /// 204 without a body.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
            etag: None,
            headers: vec![],
        }
    }

    /// Adds the `ETag` header.
    pub fn with_etag(mut self, etag: String) -> Self {
        self.etag = Some(etag);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// An `If-Match` precondition as clients send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// No header, or one the service cannot parse (an unquoted etag): a create.
    Absent,
    /// `*` or `"*"`: any version.
    Any,
    /// A quoted etag (`"MQ=="`, optionally `W/"MQ=="`), without its quotes.
    Etag(String),
}

impl IfMatch {
    /// Parses the header. Azure treats an unquoted etag as no precondition at all (which is why
    /// the Python configuration manager's unquoted update fails with 409); so does the emulator.
    pub fn parse(header: Option<&str>) -> Self {
        let Some(raw) = header.map(str::trim).filter(|h| !h.is_empty()) else {
            return IfMatch::Absent;
        };
        let raw = raw.strip_prefix("W/").unwrap_or(raw);
        if raw == "*" || raw == "\"*\"" {
            return IfMatch::Any;
        }
        match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            Some(inner) if !inner.is_empty() => IfMatch::Etag(inner.to_string()),
            _ => IfMatch::Absent,
        }
    }

    /// Whether the precondition holds for an entity with `etag`.
    pub fn admits(&self, etag: &str) -> bool {
        match self {
            IfMatch::Absent | IfMatch::Any => true,
            IfMatch::Etag(expected) => expected == etag,
        }
    }
}

/// Hub-wide settings the operations need.
#[derive(Debug, Clone, Default)]
pub struct HubSettings {
    /// Enforce parent rules and other documented limits Azure does not check.
    pub strict: bool,
    /// The realism knobs (query lag, evaluation interval, character rules, limits, ...).
    pub realism: Realism,
}

/// Devices whose twins changed since the query view last saw them.
#[derive(Debug, Default)]
struct Changed {
    ids: BTreeSet<String>,
    all: bool,
}

/// All state of one emulated hub.
#[derive(Debug)]
pub struct Hub {
    settings: HubSettings,
    devices: BTreeMap<String, Device>,
    configurations: BTreeMap<String, Configuration>,
    /// Own scope of every edge device -> its id.
    scope_index: HashMap<String, String>,
    /// Source of identity etags; starts high like Azure's.
    etag_counter: u64,
    /// Last generation id handed out (kept strictly increasing).
    last_generation: i64,
    /// What twin queries see when `--query-lag-ms` is set; `None` reads the live twins.
    query_view: Option<QueryView>,
    /// Devices to hand to the query view after the current operation.
    changed: Changed,
    /// When automatic configurations are evaluated next (`--config-eval-interval-secs`);
    /// `None` evaluates on every change.
    next_evaluation_ms: Option<i64>,
    /// Scheduled evaluations so far (creations of configurations included).
    evaluations: u64,
}

impl Hub {
    /// An empty hub created at `now_ms` (the evaluation schedule starts then).
    pub fn new(settings: HubSettings, now_ms: i64) -> Self {
        let lag = i64::try_from(settings.realism.query_lag_ms).unwrap_or(i64::MAX);
        let interval = Self::interval_ms(&settings);
        Self {
            query_view: (lag > 0).then(|| QueryView::new(lag)),
            next_evaluation_ms: interval.map(|i| now_ms.saturating_add(i)),
            settings,
            devices: BTreeMap::new(),
            configurations: BTreeMap::new(),
            scope_index: HashMap::new(),
            etag_counter: rand::random_range(100_000_000..500_000_000),
            last_generation: 0,
            changed: Changed::default(),
            evaluations: 0,
        }
    }

    fn interval_ms(settings: &HubSettings) -> Option<i64> {
        let secs = settings.realism.config_eval_interval_secs;
        (secs > 0).then(|| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
    }

    /// Whether `--strict` is on.
    pub fn strict(&self) -> bool {
        self.settings.strict
    }

    /// The realism knobs.
    pub fn realism(&self) -> &Realism {
        &self.settings.realism
    }

    /// String-literal rules of twin queries and metric queries.
    pub(crate) fn query_literals(&self) -> Literals {
        if self.settings.realism.check_literals {
            Literals::Query
        } else {
            Literals::Lenient
        }
    }

    /// String-literal rules of target conditions.
    pub(crate) fn condition_literals(&self) -> Literals {
        if self.settings.realism.check_literals {
            Literals::TargetCondition
        } else {
            Literals::Lenient
        }
    }

    /// Configurations are evaluated on a schedule, not on every change.
    pub(crate) fn evaluates_on_schedule(&self) -> bool {
        self.next_evaluation_ms.is_some()
    }

    /// Notes that the twins of `device_id` (or its modules) changed.
    pub(crate) fn mark_changed(&mut self, device_id: &str) {
        if self.query_view.is_some() && !self.changed.all {
            self.changed.ids.insert(device_id.to_string());
        }
    }

    /// Notes that any twin may have changed.
    pub(crate) fn mark_all_changed(&mut self) {
        if self.query_view.is_some() {
            self.changed.all = true;
            self.changed.ids.clear();
        }
    }

    /// The evaluation schedule for `/_emulator/stats`: interval, next evaluation, count.
    pub fn evaluation_status(&self) -> serde_json::Value {
        serde_json::json!({
            "intervalSecs": self.settings.realism.config_eval_interval_secs,
            "next": self.next_evaluation_ms.map(crate::clock::format_timestamp),
            "count": self.evaluations,
        })
    }

    /// Runs the periodic configuration evaluation if it is due. Call before each operation.
    pub fn tick(&mut self, now_ms: i64) {
        let (Some(next), Some(interval)) =
            (self.next_evaluation_ms, Self::interval_ms(&self.settings))
        else {
            return;
        };
        if now_ms < next {
            return;
        }
        self.evaluate_configurations(now_ms);
        // The next evaluation after now on the same schedule (missed ones are not repeated).
        let missed = (now_ms - next) / interval;
        self.next_evaluation_ms = Some(next + (missed + 1) * interval);
    }

    /// Hands the twins changed by the last operation to the query view, which shows them
    /// `--query-lag-ms` after `now_ms`. Call after each operation.
    pub fn publish_changes(&mut self, now_ms: i64) {
        let Some(view) = self.query_view.as_mut() else {
            return;
        };
        let changed = std::mem::take(&mut self.changed);
        if changed.all {
            view.stage_all(self.devices.values(), now_ms);
        } else {
            for id in changed.ids {
                view.stage(&id, self.devices.get(&id), now_ms);
            }
        }
    }

    fn next_etag(&mut self) -> u64 {
        self.etag_counter += 1;
        self.etag_counter
    }

    fn next_generation(&mut self, now_ms: i64) -> String {
        let generation = dotnet_ticks(now_ms).max(self.last_generation + 1);
        self.last_generation = generation;
        generation.to_string()
    }

    /// Number of registered devices.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// A registered device.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.get(id)
    }
}

impl Topology for Hub {
    fn by_scope(&self, scope: &str) -> Option<Node> {
        let id = self.scope_index.get(scope)?;
        self.devices.get(id).map(node_of)
    }

    fn children(&self, scope: &str) -> Vec<Node> {
        self.devices
            .values()
            .filter(|d| d.parent_scopes.iter().any(|p| p == scope))
            .map(node_of)
            .collect()
    }
}

fn node_of(device: &Device) -> Node {
    Node {
        id: device.id.clone(),
        is_edge: device.iot_edge,
        scope: device
            .iot_edge
            .then(|| device.device_scope.clone())
            .flatten(),
        parent_scope: device.parent_scopes.first().cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        assert_eq!(IfMatch::parse(None), IfMatch::Absent);
        assert_eq!(IfMatch::parse(Some("*")), IfMatch::Any);
        assert_eq!(IfMatch::parse(Some("\"*\"")), IfMatch::Any);
        assert_eq!(
            IfMatch::parse(Some("\"MQ==\"")),
            IfMatch::Etag("MQ==".into())
        );
        assert_eq!(
            IfMatch::parse(Some("W/\"MQ==\"")),
            IfMatch::Etag("MQ==".into())
        );
        // Unquoted: what Azure ignores.
        assert_eq!(IfMatch::parse(Some("MQ==")), IfMatch::Absent);
        assert!(IfMatch::Etag("a".into()).admits("a"));
        assert!(!IfMatch::Etag("a".into()).admits("b"));
    }
}
