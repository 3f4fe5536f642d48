//! The daily message meter: billable operations use up messages in 4 KB chunks (Learn, "Azure
//! IoT Hub billing information"); once a UTC day's quota is gone every request gets
//! `403 IotHubQuotaExceeded` until the next UTC day (Learn, troubleshooting 403002).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::clock::format_timestamp;
use crate::error::{ErrorCode, HubError};

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Default)]
struct State {
    /// UTC day (days since the Unix epoch) `used` belongs to.
    day: i64,
    used: u64,
    /// Since start or the last stats reset, across days.
    total: u64,
    by_operation: BTreeMap<&'static str, u64>,
    rejected: u64,
}

/// Counts billed messages against an optional daily quota.
#[derive(Debug)]
pub struct Meter {
    quota: Option<u64>,
    state: Mutex<State>,
}

impl Meter {
    /// A meter with `quota` messages per UTC day (`None`: count only).
    pub fn new(quota: Option<u64>) -> Self {
        Self {
            quota: quota.filter(|q| *q > 0),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self, now_ms: i64) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let day = now_ms.div_euclid(DAY_MS);
        if state.day != day {
            state.day = day;
            state.used = 0;
        }
        state
    }

    /// `Err(403 IotHubQuotaExceeded)` when today's quota is used up.
    pub fn check(&self, now_ms: i64) -> Result<(), HubError> {
        let Some(quota) = self.quota else {
            return Ok(());
        };
        let mut state = self.lock(now_ms);
        if state.used < quota {
            return Ok(());
        }
        state.rejected += 1;
        let resets = format_timestamp((state.day + 1) * DAY_MS);
        Err(HubError::new(
            ErrorCode::IotHubQuotaExceeded,
            format!(
                "the daily message quota of the hub is used up: {} of {quota} messages today; it resets at {resets} (00:00 UTC); add units or raise --daily-message-quota",
                state.used
            ),
        ))
    }

    /// Bills `messages` messages to `operation`.
    pub fn charge(&self, operation: &'static str, messages: u64, now_ms: i64) {
        if messages == 0 {
            return;
        }
        let mut state = self.lock(now_ms);
        state.used = state.used.saturating_add(messages);
        state.total = state.total.saturating_add(messages);
        *state.by_operation.entry(operation).or_default() += messages;
    }

    /// Forgets all counts (the stats reset).
    pub fn reset(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::default();
    }

    /// The `messages` part of `/_emulator/stats`.
    pub fn snapshot(&self, now_ms: i64) -> Value {
        let state = self.lock(now_ms);
        json!({
            "total": state.total,
            "today": state.used,
            "dailyQuota": self.quota,
            "resetsAt": format_timestamp((state.day + 1) * DAY_MS),
            "byOperation": state.by_operation,
            "rejected": state.rejected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_per_utc_day() {
        let meter = Meter::new(Some(10));
        let day2 = 2 * DAY_MS;
        assert!(meter.check(day2).is_ok());
        meter.charge("devices.query", 9, day2 + 1);
        assert!(meter.check(day2 + 2).is_ok());
        // The last allowed request may overshoot; the next one is refused.
        meter.charge("devices.query", 3, day2 + 3);
        let err = meter.check(day2 + 4).unwrap_err();
        assert_eq!(err.code, ErrorCode::IotHubQuotaExceeded);
        assert_eq!(err.status(), 403);
        assert!(err.message.contains("12 of 10"), "{}", err.message);
        // Midnight UTC gives a new day.
        assert!(meter.check(3 * DAY_MS).is_ok());
        let snapshot = meter.snapshot(3 * DAY_MS);
        assert_eq!(snapshot["today"], 0);
        assert_eq!(snapshot["total"], 12);
        assert_eq!(snapshot["byOperation"]["devices.query"], 12);
        assert_eq!(snapshot["rejected"], 1);
        assert_eq!(snapshot["dailyQuota"], 10);
    }

    #[test]
    fn without_a_quota_it_only_counts() {
        let meter = Meter::new(None);
        meter.charge("twins.get", 1_000_000, 0);
        assert!(meter.check(1).is_ok());
        assert_eq!(meter.snapshot(1)["dailyQuota"], Value::Null);
        meter.reset();
        assert_eq!(meter.snapshot(1)["total"], 0);
    }
}
