//! `$edgeAgent` twins as read back right after the operator applied a manifest (PerDevice mode).
//!
//! The agent-twin query lags writes like every twin query. Planning from an answer that does not
//! show the operator's own apply yet would apply the manifest again, and, worse, take an edit
//! made in between for the operator's own state. The desired properties' `$version` grows with
//! every write, so the copy with the higher version is the newer one.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::Value;

use super::plan::AgentTwin;
use crate::reconcile::devices::read_back::QUERY_LAG_ALLOWANCE;

fn desired_version(twin: &AgentTwin) -> Option<i64> {
    twin.properties
        .desired
        .get("$version")
        .and_then(Value::as_i64)
}

/// Agent twins read back after an apply, by device id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentReadBacks {
    entries: BTreeMap<String, (Instant, AgentTwin)>,
}

impl AgentReadBacks {
    pub fn remember(&mut self, twin: AgentTwin, at: Instant) {
        self.entries.insert(twin.device_id.clone(), (at, twin));
    }

    /// Drops the copies queries have certainly caught up with.
    pub fn expire(&mut self, now: Instant) {
        self.entries
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < QUERY_LAG_ALLOWANCE);
    }

    /// Takes a read-back copy over a query answer with a lower desired `$version` (or none).
    pub fn overlay(&self, agents: &mut BTreeMap<String, AgentTwin>, now: Instant) {
        for (id, (at, read)) in &self.entries {
            if now.saturating_duration_since(*at) >= QUERY_LAG_ALLOWANCE {
                continue;
            }
            let older = agents
                .get(id)
                .is_none_or(|answer| desired_version(answer) < desired_version(read));
            if older {
                agents.insert(id.clone(), read.clone());
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn agent(id: &str, version: i64, marker: &str) -> AgentTwin {
        AgentTwin::from_row(&json!({
            "deviceId": id, "desiredVersion": version, "desired": {"marker": marker},
        }))
        .unwrap()
    }

    #[test]
    fn the_higher_desired_version_wins() {
        let t0 = Instant::now();
        let mut reads = AgentReadBacks::default();
        reads.remember(agent("d", 4, "ours"), t0);
        let soon = t0 + Duration::from_secs(3);

        // The query does not show our apply yet: version 3, or no twin at all.
        let mut agents = BTreeMap::from([("d".to_string(), agent("d", 3, "before"))]);
        reads.overlay(&mut agents, soon);
        assert_eq!(agents["d"].properties.desired["marker"], "ours");
        let mut agents = BTreeMap::new();
        reads.overlay(&mut agents, soon);
        assert_eq!(agents["d"].properties.desired["marker"], "ours");

        // Someone applied a manifest after us: version 5 is theirs and is seen.
        let mut agents = BTreeMap::from([("d".to_string(), agent("d", 5, "theirs"))]);
        reads.overlay(&mut agents, soon);
        assert_eq!(agents["d"].properties.desired["marker"], "theirs");

        // Past the allowance the query is trusted, and the copy expires.
        let late = t0 + QUERY_LAG_ALLOWANCE;
        let mut agents = BTreeMap::from([("d".to_string(), agent("d", 3, "before"))]);
        reads.overlay(&mut agents, late);
        assert_eq!(agents["d"].properties.desired["marker"], "before");
        reads.expire(late);
        assert!(reads.is_empty());
    }
}
