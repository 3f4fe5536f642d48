//! Typed client for the Azure IoT Hub service REST API (api-version 2021-04-12).
//!
//! - [`ConnectionString`]: parses a hub policy connection string, with errors naming the bad part.
//! - [`HubClient`]: device identities, bulk registry calls, paged queries, twins, module twins,
//!   configurations and single-device deployments; SAS tokens, retries, timeouts, extra CA.
//! - [`HubRateLimiter`] / [`HubLimiters`]: client-side token buckets per hub and throttle class,
//!   sized from IoT Hub's documented quotas, shared by every hierarchy on a hub, plus one per
//!   hierarchy; [`HubBudget`]: what the hierarchies on one hub share (budget, in-flight slots,
//!   whether it answers). docs/tenancy.md says how one tenant is kept from harming another.
//! - [`HubCallCounters`]: calls by operation and status, for benchmarks, tests and metrics.
//! - [`models`]: the swagger's request and response bodies.
//! - [`query`]: query literals and `IN` lists within the hub's grammar and length limit.
//!
//! Secrets (policy keys, SAS tokens, device keys, deployment content) never reach `Debug`,
//! `Display`, errors or logs.

mod client;
mod connection_string;
mod error;
mod metrics;
pub mod models;
mod operation;
pub mod query;
mod rate_limit;
mod retry;
mod sas;

#[cfg(test)]
mod http_tests;

pub use client::{
    API_VERSION, BulkDeviceOutcome, BulkDeviceResult, BulkOutcome, ClientOptions, HubClient,
    MAX_BULK_ENTRIES, MAX_LIST_BODY_BYTES, MAX_OBJECT_BODY_BYTES, MAX_QUERY_PAGES, quote_etag,
};
pub use connection_string::{ConnectionString, ConnectionStringError};
pub use error::{
    HubError, HubTarget, ParsedError, TransportKind, is_transient_status, parse_error,
};
pub use metrics::{CallCount, CallResult, HubCallCounters};
pub use models::*;
pub use operation::{HubOperation, OperationClass};
pub use rate_limit::{
    FIRST_UNANSWERED_PAUSE, HubBudget, HubLimiters, HubRateLimiter, HubShare, HubTier,
    MAX_IN_FLIGHT_PER_HUB, MAX_UNANSWERED_PAUSE, Quotas, RateLimits, hub_key,
};
pub use retry::{AttemptOutcome, RetryDecision, RetryPolicy, parse_retry_after};
pub use sas::{SasToken, needs_refresh, sign_token};
