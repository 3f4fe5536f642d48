//! The twins as twin queries see them when `--query-lag-ms` is set: every change reaches this
//! view only after the lag, while `GET /twins/...` reads the live twins. IoT Hub documents its
//! queries as eventually consistent (Learn, "Queries for IoT Hub device and module twins").

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

use crate::query::Collection;
use crate::registry::Device;

/// The twin documents of one device: its own and its modules' (in module id order).
#[derive(Debug, Clone, PartialEq)]
struct DeviceDocs {
    twin: Value,
    modules: Vec<Value>,
}

impl DeviceDocs {
    fn of(device: &Device) -> Self {
        Self {
            twin: device.render_twin(),
            modules: device
                .modules
                .values()
                .map(|m| device.render_module_twin(m))
                .collect(),
        }
    }
}

/// A change waiting for its time.
#[derive(Debug)]
enum Staged {
    /// One device's documents, or its removal.
    One(String, Option<DeviceDocs>),
    /// Every device (after a change that may touch any twin, like a configuration evaluation).
    All(BTreeMap<String, DeviceDocs>),
}

/// Lagging copy of the twin documents.
#[derive(Debug)]
pub(super) struct QueryView {
    lag_ms: i64,
    visible: BTreeMap<String, DeviceDocs>,
    /// Changes in the order they happened; each is due `lag_ms` after it happened.
    pending: VecDeque<(i64, Staged)>,
}

impl QueryView {
    pub(super) fn new(lag_ms: i64) -> Self {
        Self {
            lag_ms,
            visible: BTreeMap::new(),
            pending: VecDeque::new(),
        }
    }

    /// Records the current state of one device (`None`: it was deleted) as of `now_ms`.
    pub(super) fn stage(&mut self, id: &str, device: Option<&Device>, now_ms: i64) {
        let due = now_ms.saturating_add(self.lag_ms);
        self.pending
            .push_back((due, Staged::One(id.to_string(), device.map(DeviceDocs::of))));
    }

    /// Records the current state of every device as of `now_ms`.
    pub(super) fn stage_all<'a>(&mut self, devices: impl Iterator<Item = &'a Device>, now_ms: i64) {
        let due = now_ms.saturating_add(self.lag_ms);
        let all = devices.map(|d| (d.id.clone(), DeviceDocs::of(d))).collect();
        self.pending.push_back((due, Staged::All(all)));
    }

    /// Applies every change that is due at `now_ms`.
    fn advance(&mut self, now_ms: i64) {
        while self.pending.front().is_some_and(|(due, _)| *due <= now_ms) {
            let Some((_, staged)) = self.pending.pop_front() else {
                break;
            };
            match staged {
                Staged::One(id, Some(docs)) => {
                    self.visible.insert(id, docs);
                }
                Staged::One(id, None) => {
                    self.visible.remove(&id);
                }
                Staged::All(all) => self.visible = all,
            }
        }
    }

    /// The documents of `collection` that queries see at `now_ms`, in id order.
    pub(super) fn documents(&mut self, collection: Collection, now_ms: i64) -> Vec<Value> {
        self.advance(now_ms);
        match collection {
            Collection::Devices => self.visible.values().map(|d| d.twin.clone()).collect(),
            Collection::DevicesModules => self
                .visible
                .values()
                .flat_map(|d| d.modules.iter().cloned())
                .collect(),
        }
    }
}
