//! The write log served at `GET /_emulator/writes`: every request to a mutating operation, in
//! arrival order, with its `User-Agent`, so a test can tell which client wrote when (two
//! operator replicas must never write in the same interval).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::{Value, json};

/// Entries kept; older ones are dropped first.
pub const WRITE_LOG_CAPACITY: usize = 100_000;

/// One mutating request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Arrival, in milliseconds since the epoch (the emulator's clock).
    pub at_millis: i64,
    pub method: String,
    /// The request path, without the query.
    pub path: String,
    /// The `User-Agent` header (empty when absent).
    pub user_agent: String,
    /// The status answered.
    pub status: u16,
}

/// The log, bounded to [`WRITE_LOG_CAPACITY`] entries.
#[derive(Debug, Default)]
pub struct WriteLog {
    entries: Mutex<VecDeque<Write>>,
}

impl WriteLog {
    pub fn record(&self, write: Write) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == WRITE_LOG_CAPACITY {
            entries.pop_front();
        }
        entries.push_back(write);
    }

    /// The JSON served: `[{time, method, path, userAgent, status}]`, oldest first.
    pub fn snapshot(&self) -> Value {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        Value::Array(
            entries
                .iter()
                .map(|w| {
                    json!({
                        "time": format_millis(w.at_millis),
                        "method": w.method,
                        "path": w.path,
                        "userAgent": w.user_agent,
                        "status": w.status,
                    })
                })
                .collect(),
        )
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-12-02T01:02:03.456Z`.
pub fn format_millis(millis: i64) -> String {
    let ts = jiff::Timestamp::from_millisecond(millis).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(at_millis: i64, user_agent: &str) -> Write {
        Write {
            at_millis,
            method: "PUT".into(),
            path: "/devices/e1".into(),
            user_agent: user_agent.into(),
            status: 200,
        }
    }

    #[test]
    fn the_log_lists_writes_oldest_first_with_millisecond_times() {
        let log = WriteLog::default();
        log.record(write(1_623_457_666_383, "op/1 (a)"));
        log.record(write(1_623_457_666_384, "op/1 (b)"));
        let s = log.snapshot();
        assert_eq!(
            s[0],
            json!({"time": "2021-06-12T00:27:46.383Z", "method": "PUT", "path": "/devices/e1",
                   "userAgent": "op/1 (a)", "status": 200})
        );
        assert_eq!(s[1]["userAgent"], "op/1 (b)");
        assert_eq!(format_millis(1_623_457_666_000), "2021-06-12T00:27:46.000Z");
    }

    #[test]
    fn the_log_keeps_the_newest_entries() {
        let log = WriteLog::default();
        for i in 0..(WRITE_LOG_CAPACITY as i64 + 2) {
            log.record(write(i, "x"));
        }
        let s = log.snapshot();
        let entries = s.as_array().unwrap();
        assert_eq!(entries.len(), WRITE_LOG_CAPACITY);
        assert_eq!(entries[0]["time"], format_millis(2));
    }
}
