//! The emulator's request counters (`GET /_emulator/stats`): reading, resetting and summing them.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::Deserialize;

/// Use of one quota class.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub struct ClassUse {
    /// Requests answered.
    pub requests: u64,
    /// Of which writes.
    pub writes: u64,
    /// Quota units taken (a bulk call of 100 devices takes 100 registry units).
    pub units: u64,
}

/// A snapshot of the emulator's counters since the last reset.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HubStats {
    /// Requests answered.
    pub total: u64,
    /// Operation name (`devices.bulk`) -> HTTP status (`"200"`) -> count.
    #[serde(default)]
    pub operations: BTreeMap<String, BTreeMap<String, u64>>,
    /// Quota class name (`registry`, `query`, `configurations`, ...) -> use.
    #[serde(default)]
    pub classes: BTreeMap<String, ClassUse>,
    /// Registry quota units taken.
    #[serde(default)]
    pub registry_operations: u64,
    /// Service calls that changed hub state.
    #[serde(default)]
    pub write_calls: u64,
    /// Requests answered 429.
    #[serde(default)]
    pub throttled: u64,
    /// Messages billed against the hub's daily quota (4 KB chunks).
    #[serde(default)]
    pub messages: Messages,
}

/// The emulator's message meter: what Azure would bill against the daily quota.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Messages {
    /// Billed messages since the last reset.
    #[serde(default)]
    pub total: u64,
    /// Operation name -> billed messages.
    #[serde(default)]
    pub by_operation: BTreeMap<String, u64>,
}

impl HubStats {
    /// Service and device calls, leaving out the emulator's own `/_emulator` routes.
    pub fn hub_calls(&self) -> u64 {
        self.operations
            .iter()
            .filter(|(name, _)| name.as_str() != "emulator")
            .map(|(_, by_status)| by_status.values().sum::<u64>())
            .sum()
    }

    /// Hub calls by kind, most frequent first, with any non-2xx answers in parentheses:
    /// `devices.bulk 10, devices.applyConfigurationContent 26 (429: 1)`.
    pub fn by_kind(&self) -> String {
        let mut kinds: Vec<(&str, u64, String)> = self
            .operations
            .iter()
            .filter(|(name, _)| name.as_str() != "emulator")
            .map(|(name, by_status)| {
                let failures: Vec<String> = by_status
                    .iter()
                    .filter(|(status, _)| !status.starts_with('2'))
                    .map(|(status, n)| format!("{status}: {n}"))
                    .collect();
                let note = if failures.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", failures.join(", "))
                };
                (name.as_str(), by_status.values().sum(), note)
            })
            .collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        if kinds.is_empty() {
            return "none".into();
        }
        kinds
            .iter()
            .map(|(name, n, note)| format!("{name} {n}{note}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Reads and resets the counters of one running emulator.
#[derive(Debug, Clone)]
pub struct StatsClient {
    http: reqwest::Client,
    base: String,
}

impl StatsClient {
    /// A client for the emulator at `https://localhost:<port>` trusting its `ca.crt`.
    pub fn new(port: u16, ca_pem: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(ca_pem.as_bytes())
                    .context("the emulator's ca.crt is not PEM")?,
            )
            .build()?;
        Ok(Self {
            http,
            base: format!("https://localhost:{port}/_emulator/stats"),
        })
    }

    /// The counters since the last reset.
    pub async fn snapshot(&self) -> anyhow::Result<HubStats> {
        let response = self
            .http
            .get(&self.base)
            .send()
            .await
            .with_context(|| format!("GET {}", self.base))?;
        let response = response
            .error_for_status()
            .with_context(|| format!("GET {}", self.base))?;
        response
            .json()
            .await
            .with_context(|| format!("the answer of GET {} is not the stats JSON", self.base))
    }

    /// Zeroes every counter.
    pub async fn reset(&self) -> anyhow::Result<()> {
        let url = format!("{}/reset", self.base);
        self.http
            .post(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("POST {url}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HubStats {
        serde_json::from_value(serde_json::json!({
            "total": 45,
            "operations": {
                "devices.bulk": {"200": 10},
                "devices.query": {"200": 30},
                "devices.applyConfigurationContent": {"204": 3, "429": 1},
                "emulator": {"200": 1},
            },
            "classes": {"registry": {"requests": 10, "writes": 10, "units": 1000}, "query": {"requests": 30, "writes": 0, "units": 30}},
            "registryOperations": 1000,
            "writeCalls": 14,
            "throttled": 1,
            "faultsInjected": 0,
            "telemetry": {"total": 0, "bySender": {}},
        }))
        .unwrap()
    }

    #[test]
    fn parses_the_emulator_snapshot() {
        let stats = sample();
        assert_eq!(stats.total, 45);
        assert_eq!(stats.registry_operations, 1000);
        assert_eq!(
            stats.classes["registry"],
            ClassUse {
                requests: 10,
                writes: 10,
                units: 1000
            }
        );
        assert_eq!(
            stats.operations["devices.applyConfigurationContent"]["429"],
            1
        );
        assert_eq!(
            stats.hub_calls(),
            44,
            "the emulator's own stats route is not a hub call"
        );
        assert_eq!((stats.write_calls, stats.throttled), (14, 1));
    }

    #[test]
    fn by_kind_lists_most_frequent_first_with_failures_and_without_the_emulators_own_routes() {
        assert_eq!(
            sample().by_kind(),
            "devices.query 30, devices.bulk 10, devices.applyConfigurationContent 4 (429: 1)"
        );
        assert_eq!(HubStats::default().by_kind(), "none");
    }
}
