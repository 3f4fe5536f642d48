//! The hub's in-memory state and the operations on it. Everything here is synchronous and free
//! of HTTP: the server parses a request, calls one method, and renders the [`Reply`].

mod bulk;
mod configurations;
mod device_facing;
mod devices;
mod twin_query;
mod twins;

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

pub use bulk::bulk_units;
pub use configurations::Configuration;

use crate::clock::dotnet_ticks;
use crate::registry::Device;
use crate::scopes::{Node, Topology};

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
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Enforce parent rules and other documented limits Azure does not check.
    pub strict: bool,
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
}

impl Hub {
    /// An empty hub.
    pub fn new(settings: HubSettings) -> Self {
        Self {
            settings,
            devices: BTreeMap::new(),
            configurations: BTreeMap::new(),
            scope_index: HashMap::new(),
            etag_counter: rand::random_range(100_000_000..500_000_000),
            last_generation: 0,
        }
    }

    /// Whether `--strict` is on.
    pub fn strict(&self) -> bool {
        self.settings.strict
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
