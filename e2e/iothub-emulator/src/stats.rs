//! Request counters served at `GET /_emulator/stats` for tests and benchmarks.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Value, json};

/// Counters of one statistics class.
#[derive(Debug, Clone, Copy, Default)]
struct ClassCounts {
    requests: u64,
    writes: u64,
    units: u64,
}

#[derive(Debug, Default)]
struct Counters {
    total: u64,
    operations: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    classes: BTreeMap<&'static str, ClassCounts>,
    throttled: u64,
    shaped: u64,
    shaped_ms: u64,
    faults_injected: u64,
    telemetry: BTreeMap<String, u64>,
}

/// One answered request, as the stats see it.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// Operation name, e.g. `devices.create`.
    pub operation: &'static str,
    /// Statistics class: `registry`, `query`, `twinRead`, `twinUpdate`, `configurations`,
    /// `statistics`, `device` or `unrouted`.
    pub class: &'static str,
    /// Whether the operation writes.
    pub is_write: bool,
    /// HTTP status answered.
    pub status: u16,
    /// Quota units taken (a bulk call of 100 devices takes 100 registry units).
    pub units: u64,
    /// Whether the answer was an injected fault.
    pub fault: bool,
    /// Milliseconds the request waited in traffic shaping.
    pub shaped_ms: u64,
}

/// Thread-safe request counters.
#[derive(Debug, Default)]
pub struct Stats {
    counters: Mutex<Counters>,
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one answered request.
    pub fn record(&self, record: Record) {
        let mut c = self.lock();
        c.total += 1;
        *c.operations
            .entry(record.operation)
            .or_default()
            .entry(record.status)
            .or_default() += 1;
        let class = c.classes.entry(record.class).or_default();
        class.requests += 1;
        if record.is_write {
            class.writes += 1;
        }
        class.units += record.units;
        if record.status == 429 {
            c.throttled += 1;
        }
        if record.fault {
            c.faults_injected += 1;
        }
        if record.shaped_ms > 0 {
            c.shaped += 1;
            c.shaped_ms += record.shaped_ms;
        }
    }

    /// Counts a telemetry message of a device (`id`) or module (`id/module`).
    pub fn record_telemetry(&self, sender: String) {
        *self.lock().telemetry.entry(sender).or_default() += 1;
    }

    /// Clears every counter.
    pub fn reset(&self) {
        *self.lock() = Counters::default();
    }

    /// The JSON served at `/_emulator/stats`.
    pub fn snapshot(&self) -> Value {
        let c = self.lock();
        let operations: serde_json::Map<String, Value> = c
            .operations
            .iter()
            .map(|(name, by_status)| {
                let counts = by_status
                    .iter()
                    .map(|(status, n)| (status.to_string(), json!(n)))
                    .collect();
                ((*name).to_string(), Value::Object(counts))
            })
            .collect();
        let classes: serde_json::Map<String, Value> = c
            .classes
            .iter()
            .map(|(name, k)| {
                (
                    (*name).to_string(),
                    json!({"requests": k.requests, "writes": k.writes, "units": k.units}),
                )
            })
            .collect();
        let service_writes: u64 = c
            .classes
            .iter()
            .filter(|(name, _)| !matches!(**name, "device" | "unrouted"))
            .map(|(_, k)| k.writes)
            .sum();
        let registry_units = c.classes.get("registry").map_or(0, |k| k.units);
        json!({
            "total": c.total,
            "operations": operations,
            "classes": classes,
            "registryOperations": registry_units,
            "writeCalls": service_writes,
            "throttled": c.throttled,
            "shaped": {"requests": c.shaped, "delayMs": c.shaped_ms},
            "faultsInjected": c.faults_injected,
            "telemetry": {
                "total": c.telemetry.values().sum::<u64>(),
                "bySender": c.telemetry,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        operation: &'static str,
        class: &'static str,
        is_write: bool,
        status: u16,
        units: u64,
    ) -> Record {
        Record {
            operation,
            class,
            is_write,
            status,
            units,
            fault: false,
            shaped_ms: 0,
        }
    }

    #[test]
    fn snapshot_counts_by_operation_status_and_class() {
        let stats = Stats::default();
        stats.record(rec("devices.create", "registry", true, 200, 1));
        stats.record(rec("devices.create", "registry", true, 409, 1));
        stats.record(rec("devices.bulk", "registry", true, 200, 100));
        stats.record(rec("devices.get", "registry", false, 429, 0));
        stats.record(rec("device.twin.patchReported", "device", true, 200, 0));
        stats.record_telemetry("edge1".into());
        stats.record_telemetry("edge1/$edgeAgent".into());
        let s = stats.snapshot();
        assert_eq!(s["total"], 5);
        assert_eq!(s["operations"]["devices.create"]["200"], 1);
        assert_eq!(s["operations"]["devices.create"]["409"], 1);
        assert_eq!(s["classes"]["registry"]["writes"], 3);
        assert_eq!(s["registryOperations"], 102);
        assert_eq!(
            s["writeCalls"], 3,
            "device-facing writes are not service write calls"
        );
        assert_eq!(s["throttled"], 1);
        assert_eq!(s["shaped"]["requests"], 0);
        stats.record(Record {
            shaped_ms: 250,
            ..rec("twins.get", "twinRead", false, 200, 1)
        });
        assert_eq!(stats.snapshot()["shaped"]["delayMs"], 250);
        assert_eq!(s["telemetry"]["total"], 2);
        assert_eq!(s["telemetry"]["bySender"]["edge1/$edgeAgent"], 1);
        stats.reset();
        assert_eq!(stats.snapshot()["total"], 0);
    }
}
