//! Counts of hub calls by operation and result, readable directly (benchmarks, e2e tests) and
//! exportable through a prometheus-client registry.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::operation::{HubOperation, OperationClass};

/// How one HTTP attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CallResult {
    /// The hub answered with this status.
    Status(u16),
    /// No answer (connection failure, timeout).
    TransportError,
}

impl CallResult {
    fn label(self) -> String {
        match self {
            CallResult::Status(status) => status.to_string(),
            CallResult::TransportError => "transport_error".to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

/// Size of one message IoT Hub bills against its daily quota.
pub const BILLED_CHUNK_BYTES: usize = 4 * 1024;

/// Messages IoT Hub bills for `bytes` of a query answer or twin: 4 KB chunks, at least one
/// (Learn, "Azure IoT Hub billing information").
pub fn billed_messages(bytes: usize) -> u64 {
    bytes.div_ceil(BILLED_CHUNK_BYTES).max(1) as u64
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: String,
    status: String,
}

/// A snapshot row: how many attempts of `operation` ended with `result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallCount {
    /// The call.
    pub operation: HubOperation,
    /// How it ended.
    pub result: CallResult,
    /// Number of HTTP attempts (retries count separately).
    pub count: u64,
}

/// Call counters shared by clients (pass one in [`super::ClientOptions::counters`] to
/// aggregate several clients). Every HTTP attempt is counted, retries included.
#[derive(Debug, Default)]
pub struct HubCallCounters {
    calls: Mutex<BTreeMap<(HubOperation, CallResult), u64>>,
    rate_limit_wait: Mutex<Duration>,
    family: Family<CallLabels, Counter>,
    billed: Mutex<BTreeMap<HubOperation, u64>>,
    billed_family: Family<OperationLabel, Counter>,
    class_family: Family<ClassLabel, Counter>,
    throttled_family: Family<ClassLabel, Counter>,
}

impl HubCallCounters {
    /// Empty counters.
    pub fn new() -> Self {
        HubCallCounters::default()
    }

    /// Records one attempt.
    pub fn record(&self, operation: HubOperation, result: CallResult) {
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((operation, result))
            .or_default() += 1;
        self.family
            .get_or_create(&CallLabels {
                operation: operation.as_str().to_string(),
                status: result.label(),
            })
            .inc();
        let class = ClassLabel {
            class: operation.class().as_str().to_string(),
        };
        self.class_family.get_or_create(&class).inc();
        if result == CallResult::Status(429) {
            self.throttled_family.get_or_create(&class).inc();
        }
    }

    /// Records the messages IoT Hub bills for `bytes` moved by `operation` (a query page, a
    /// twin read or write): what the operator's polling costs of the daily quota.
    pub fn record_billed(&self, operation: HubOperation, bytes: usize) {
        let messages = billed_messages(bytes);
        *self
            .billed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(operation)
            .or_default() += messages;
        self.billed_family
            .get_or_create(&OperationLabel {
                operation: operation.as_str().to_string(),
            })
            .inc_by(messages);
    }

    /// Billed messages recorded so far, over all operations.
    pub fn billed(&self) -> u64 {
        self.billed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Adds time spent waiting for the client-side rate limiter.
    pub fn record_rate_limit_wait(&self, waited: Duration) {
        *self
            .rate_limit_wait
            .lock()
            .unwrap_or_else(|p| p.into_inner()) += waited;
    }

    /// All non-zero counts, ordered by operation then result.
    pub fn snapshot(&self) -> Vec<CallCount> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(&(operation, result), &count)| CallCount {
                operation,
                result,
                count,
            })
            .collect()
    }

    /// Attempts in total.
    pub fn total(&self) -> u64 {
        self.sum(|_, _| true)
    }

    /// Attempts of one operation.
    pub fn count_operation(&self, operation: HubOperation) -> u64 {
        self.sum(|op, _| op == operation)
    }

    /// Attempts that ended with an HTTP status.
    pub fn count_status(&self, status: u16) -> u64 {
        self.sum(|_, result| result == CallResult::Status(status))
    }

    /// Attempts of operations that change hub state ([`HubOperation::is_write`]).
    pub fn writes(&self) -> u64 {
        self.sum(|op, _| op.is_write())
    }

    /// Total time callers waited for the client-side rate limiter.
    pub fn rate_limit_wait(&self) -> Duration {
        *self
            .rate_limit_wait
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn sum(&self, keep: impl Fn(HubOperation, CallResult) -> bool) -> u64 {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((op, result), _)| keep(*op, *result))
            .map(|(_, count)| count)
            .sum()
    }

    /// Registers the call, class, throttling and billing counters in a prometheus-client
    /// registry. Every class is present from the start, so a rate over a class that has not
    /// been throttled yet is 0 rather than absent.
    pub fn register(&self, registry: &mut Registry) {
        for class in OperationClass::ALL {
            let label = ClassLabel {
                class: class.as_str().to_string(),
            };
            drop(self.class_family.get_or_create(&label));
            drop(self.throttled_family.get_or_create(&label));
        }
        registry.register(
            "iothub_calls",
            "IoT Hub service API calls by operation and HTTP status (retries counted separately)",
            self.family.clone(),
        );
        registry.register(
            "iothub_billed_messages",
            "Messages IoT Hub bills against its daily quota for the operator's query answers and twin reads and writes (4 KB chunks, estimated from the bytes moved)",
            self.billed_family.clone(),
        );
        registry.register(
            "iothub_class_calls",
            "IoT Hub service API calls by the hub's throttle class (registry, query, twin_read, twin_update, configuration): the operator's use of each per-minute quota",
            self.class_family.clone(),
        );
        registry.register(
            "iothub_throttled",
            "IoT Hub answers of 429 Too Many Requests by throttle class",
            self.throttled_family.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_operation_and_result() {
        let counters = HubCallCounters::new();
        counters.record(HubOperation::GetDevice, CallResult::Status(200));
        counters.record(HubOperation::GetDevice, CallResult::Status(200));
        counters.record(HubOperation::BulkDevices, CallResult::Status(429));
        counters.record(HubOperation::Query, CallResult::TransportError);
        assert_eq!(counters.total(), 4);
        assert_eq!(counters.count_operation(HubOperation::GetDevice), 2);
        assert_eq!(counters.count_status(429), 1);
        assert_eq!(counters.writes(), 1);
        assert_eq!(
            counters.snapshot()[0],
            CallCount {
                operation: HubOperation::GetDevice,
                result: CallResult::Status(200),
                count: 2
            }
        );
    }

    #[test]
    fn billed_messages_are_4_kb_chunks_per_call() {
        assert_eq!(billed_messages(0), 1);
        assert_eq!(billed_messages(4096), 1);
        assert_eq!(billed_messages(4097), 2);
        let counters = HubCallCounters::new();
        counters.record_billed(HubOperation::Query, 10_000);
        counters.record_billed(HubOperation::GetTwin, 300);
        assert_eq!(counters.billed(), 4);
        let mut registry = Registry::default();
        counters.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"iothub_billed_messages_total{operation="query"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn exports_through_prometheus() {
        let counters = HubCallCounters::new();
        let mut registry = Registry::default();
        counters.register(&mut registry);
        counters.record(HubOperation::DeleteDevice, CallResult::Status(204));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"iothub_calls_total{operation="delete_device",status="204"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn counts_calls_and_429s_by_throttle_class() {
        let counters = HubCallCounters::new();
        let mut registry = Registry::default();
        counters.register(&mut registry);
        counters.record(HubOperation::CreateOrUpdateDevice, CallResult::Status(200));
        counters.record(HubOperation::BulkDevices, CallResult::Status(429));
        counters.record(HubOperation::GetTwin, CallResult::Status(200));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"iothub_class_calls_total{class="registry"} 2"#,
            r#"iothub_class_calls_total{class="twin_read"} 1"#,
            r#"iothub_class_calls_total{class="query"} 0"#,
            r#"iothub_throttled_total{class="registry"} 1"#,
            r#"iothub_throttled_total{class="twin_read"} 0"#,
            r#"iothub_throttled_total{class="configuration"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
