//! The typed HTTP client for the IoT Hub service API (api-version 2021-04-12).
//!
//! Every call goes through one pipeline: wait for the hierarchy's and the hub's rate limiters,
//! sign (or reuse) a SAS token, take one of the hub's in-flight slots, send with a timeout, read
//! the body up to a cap, count the attempt, and retry transient failures (5xx, 408, connection
//! errors with jittered exponential backoff; 429 honouring `Retry-After` and holding back every
//! caller of that throttle class meanwhile). The `Authorization` header is marked sensitive and
//! never logged; errors carry only the operation, the target, the status, the hub's error code
//! and a scrubbed message.
//!
//! What one hub can cost the others (docs/tenancy.md): every call has a total time budget
//! ([`ClientOptions::call_budget`]) from its first admission by the rate limiter to its answer,
//! retries, backoffs and waits for a slot included; a call that ran out of it without any answer
//! pauses the hub, so the next calls to it fail at once instead of waiting out their own budget
//! (`HubBudget::note_unanswered`). Bodies are read as a stream and dropped at a cap
//! ([`MAX_LIST_BODY_BYTES`], [`MAX_OBJECT_BODY_BYTES`]); redirects are never followed; a query
//! stops at a continuation token it has seen before and at [`MAX_QUERY_PAGES`].
//!
//! Retried writes are safe to repeat but may surface as a "conflict" when the lost first
//! attempt actually succeeded (409 `DeviceAlreadyExists` for a create, 412 for an etag-guarded
//! update, `DeviceAlreadyExists` per device in a bulk create). Callers re-read and compare.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::connection_string::ConnectionString;
use super::error::{HubError, HubTarget, TransportKind, parse_error, scrub};
use super::metrics::{CallResult, HubCallCounters};
use super::models::{
    BulkRegistryOperationResult, Configuration, ConfigurationContent, Device,
    DeviceRegistryOperationError, DeviceRegistryOperationWarning, ExportImportDevice, Module,
    QuerySpecification, Twin,
};
use super::operation::HubOperation;
use super::rate_limit::{HubRateLimiter, HubShare, MAX_IN_FLIGHT_PER_HUB};
use super::retry::{AttemptOutcome, RetryDecision, RetryPolicy, parse_retry_after};
use super::sas::TokenSource;

/// The api-version this client speaks.
pub const API_VERSION: &str = "2021-04-12";

/// Most entries the hub accepts in one `POST /devices`.
pub const MAX_BULK_ENTRIES: usize = 100;

/// Most bytes read of one answer to a list: a query page, the configuration list, a device's
/// modules; for a query, of all its pages together. 64 MiB holds the largest page the
/// operator's own queries can draw from a real hub (1,000 agent twins, each with a reported and,
/// in PerDevice mode, a desired section at IoT Hub's 32 KB cap per section: 64 MB) and the
/// hub's whole configuration list (at most 100 configurations, each well under 1 MB); a
/// typical page is under a tenth of it.
pub const MAX_LIST_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Most bytes read of any other answer (one device, twin, configuration or bulk result): a
/// twin is at most three sections of 8 to 32 KB and its metadata, a configuration's content a
/// few hundred KB; 4 MiB is ample for either.
pub const MAX_OBJECT_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Most pages read for one query. The operator's queries cover one hierarchy (at most 1,000
/// devices) or one `IN` list (at most 1,000 ids), one or two pages of 1,000; 100 leaves room for
/// a hub that answers with small pages and stops a server that never ends.
pub const MAX_QUERY_PAGES: usize = 100;

/// Characters kept as they are in a path segment (RFC 3986 unreserved). Everything else,
/// including `#`, `?`, `%`, `$` and `/`, is percent-encoded: `$edgeAgent` -> `%24edgeAgent`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Client settings. `Default` is what the operator uses.
#[derive(Clone)]
pub struct ClientOptions {
    /// Whole-request timeout of one attempt (connect, send, read the body).
    pub request_timeout: Duration,
    /// Total time one call may take from its first admission by the rate limiter to its answer:
    /// every attempt, backoff, `Retry-After` wait and wait for an in-flight slot. The default
    /// (90 s) allows three attempts at a hub that does not answer, or the backoffs of five 429s
    /// without `Retry-After`; after it the call fails with `DeadlineExceeded`.
    pub call_budget: Duration,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Lifetime of each SAS token.
    pub token_lifetime: Duration,
    /// Renew a token this long before it expires (covers clock skew between us and the hub).
    pub token_refresh_before: Duration,
    /// `x-ms-max-item-count` for queries (the hub's largest page unless a test wants small ones).
    pub query_page_size: u32,
    /// Entries per bulk call, 1 to 100.
    pub bulk_chunk_size: usize,
    /// Counters to record into; a fresh set when `None`. Share one to aggregate clients.
    pub counters: Option<Arc<HubCallCounters>>,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(30),
            call_budget: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            token_lifetime: Duration::from_secs(3600),
            token_refresh_before: Duration::from_secs(300),
            query_page_size: super::query::MAX_QUERY_PAGE_SIZE,
            bulk_chunk_size: MAX_BULK_ENTRIES,
            counters: None,
            user_agent: concat!("edge-hierarchy-operator/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("request_timeout", &self.request_timeout)
            .field("call_budget", &self.call_budget)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("token_lifetime", &self.token_lifetime)
            .field("token_refresh_before", &self.token_refresh_before)
            .field("query_page_size", &self.query_page_size)
            .field("bulk_chunk_size", &self.bulk_chunk_size)
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

/// Client for one hub. Cheap to clone (one `Arc`); clones share the connection pool, the token
/// cache, the rate limiter and the counters.
#[derive(Clone)]
pub struct HubClient {
    inner: Arc<Inner>,
    /// The rate budgets, in-flight slots and responsiveness this client's calls count against.
    share: HubShare,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    /// Same value: same hub, same policy and key, same trusted CA (see [`HubClient::sharing_key`]).
    sharing_key: String,
    tokens: TokenSource,
    counters: Arc<HubCallCounters>,
    options: ClientOptions,
}

fn sharing_key(conn: &ConnectionString, extra_ca_pem: Option<&[u8]>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [
        conn.host_name().as_bytes(),
        conn.key_name().as_bytes(),
        conn.key(),
        extra_ca_pem.unwrap_or_default(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("host", &self.host_name())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// Per-device result of [`HubClient::bulk_devices`].
#[derive(Debug, Clone, PartialEq)]
pub enum BulkDeviceOutcome {
    /// Done; the hub may attach warnings (`DeviceRegisteredWithoutTwin`).
    Succeeded {
        /// Warnings for this device.
        warnings: Vec<DeviceRegistryOperationWarning>,
    },
    /// The hub rejected this entry (for example `DeviceAlreadyExists`, `InvalidDeviceScope`).
    Failed(DeviceRegistryOperationError),
    /// The call carrying this entry failed as a whole (after retries).
    RequestFailed(HubError),
    /// Not sent because an earlier call failed.
    NotSent,
}

/// One entry's result, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkDeviceResult {
    /// The entry's device id.
    pub device_id: String,
    /// The entry's module id, for module entries.
    pub module_id: Option<String>,
    /// What happened.
    pub outcome: BulkDeviceOutcome,
}

/// Results of a bulk registry operation split into calls of at most 100 entries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BulkOutcome {
    /// One result per input entry, in input order.
    pub results: Vec<BulkDeviceResult>,
    /// HTTP calls made (not counting retries).
    pub calls: usize,
}

impl BulkOutcome {
    /// True when every entry succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.results
            .iter()
            .all(|r| matches!(r.outcome, BulkDeviceOutcome::Succeeded { .. }))
    }

    /// Entries that did not succeed.
    pub fn failures(&self) -> impl Iterator<Item = &BulkDeviceResult> {
        self.results
            .iter()
            .filter(|r| !matches!(r.outcome, BulkDeviceOutcome::Succeeded { .. }))
    }

    /// The first whole-call error, if a call failed (the reason the rest were not sent).
    pub fn request_error(&self) -> Option<&HubError> {
        self.results.iter().find_map(|r| match &r.outcome {
            BulkDeviceOutcome::RequestFailed(e) => Some(e),
            _ => None,
        })
    }
}

/// One HTTP request description.
struct Call {
    operation: HubOperation,
    target: HubTarget,
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    cost: u32,
    accept: &'static [u16],
    /// Most bytes of the answer read.
    max_body: usize,
}

/// A response with an accepted status.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl HubClient {
    /// Builds a client. `extra_ca_pem` (one or more PEM certificates, for example the local
    /// emulator's CA or a private endpoint's) is trusted in addition to the system roots.
    /// `share` should come from [`super::HubLimiters::join`] so all users of one hub share its
    /// budget (a bare limiter makes the client alone on its hub).
    pub fn new(
        conn: ConnectionString,
        extra_ca_pem: Option<&[u8]>,
        share: impl Into<HubShare>,
        options: ClientOptions,
    ) -> Result<HubClient, HubError> {
        let host = conn.host_name().to_string();
        let setup = |message: String| HubError::Setup {
            host: host.clone(),
            message,
        };
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .timeout(options.request_timeout)
            .connect_timeout(options.connect_timeout)
            .user_agent(options.user_agent.clone())
            // IoT Hub never redirects; following one would send the SAS token's request to a
            // server the connection string does not name.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90));
        if let Some(pem) = extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                setup(format!(
                    "the extra CA certificate is not valid PEM ({e}); give the CA in PEM form (-----BEGIN CERTIFICATE-----)"
                ))
            })?;
            if certs.is_empty() {
                return Err(setup(
                    "the extra CA data holds no PEM certificate; give the CA in PEM form (-----BEGIN CERTIFICATE-----)".into(),
                ));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| setup(format!("TLS/HTTP set-up failed: {}", error_chain(&e))))?;
        let counters = options.counters.clone().unwrap_or_default();
        let sharing_key = sharing_key(&conn, extra_ca_pem);
        let tokens = TokenSource::new(conn, options.token_lifetime, options.token_refresh_before);
        Ok(HubClient {
            inner: Arc::new(Inner {
                http,
                base_url: format!("https://{host}"),
                sharing_key,
                tokens,
                counters,
                options,
            }),
            share: share.into(),
        })
    }

    /// This client (same connections, token cache and counters) counting its calls against
    /// `share`: one client per credentials, one share per hierarchy.
    pub fn with_share(&self, share: HubShare) -> HubClient {
        HubClient {
            inner: self.inner.clone(),
            share,
        }
    }

    /// The hub host this client talks to.
    pub fn host_name(&self) -> &str {
        self.inner.tokens.connection().host_name()
    }

    /// Equal for two clients that reach the same hub with the same policy, key and trusted CA,
    /// so what one reads the other may be shown: a hierarchy whose Secrets point the same host
    /// name at another server (its own CA) or use other rights never shares with this one.
    /// A SHA-256 digest: it says nothing about the key.
    pub fn sharing_key(&self) -> &str {
        &self.inner.sharing_key
    }

    /// The shared access policy name in use.
    pub fn policy_name(&self) -> &str {
        self.inner.tokens.connection().key_name()
    }

    /// Call counters of this client (shared with whoever passed them in the options).
    pub fn counters(&self) -> &Arc<HubCallCounters> {
        &self.inner.counters
    }

    /// The hub's shared rate limiter this client waits on.
    pub fn limiter(&self) -> &Arc<HubRateLimiter> {
        self.share.hub().shared()
    }

    /// The budgets this client's calls count against.
    pub fn share(&self) -> &HubShare {
        &self.share
    }

    // ----- device identities -------------------------------------------------------------

    /// `GET /devices/{id}`. A missing device is an error with `is_not_found()`.
    pub async fn get_device(&self, device_id: &str) -> Result<Device, HubError> {
        let op = HubOperation::GetDevice;
        let target = HubTarget::Device(device_id.to_string());
        let path = path(op, &target, &["devices", device_id])?;
        let reply = self
            .execute(Call::new(op, target.clone(), Method::GET, path, &[200]))
            .await?;
        let mut device: Device = decode(op, &target, &reply)?;
        fill_etag(&mut device.etag, &reply.headers);
        Ok(device)
    }

    /// `PUT /devices/{id}` with the id from `device.device_id`. Without `if_match` this is a
    /// create (409 if the device exists); with it, an update that fails with 412 when the etag
    /// no longer matches (`"*"` forces). Send the full device read before (read-modify-write):
    /// omitted fields may be reset by the hub.
    pub async fn create_or_update_device(
        &self,
        device: &Device,
        if_match: Option<&str>,
    ) -> Result<Device, HubError> {
        let op = HubOperation::CreateOrUpdateDevice;
        let device_id = required_id(op, device.device_id.as_deref(), "device.deviceId")?;
        let target = HubTarget::Device(device_id.to_string());
        let path = path(op, &target, &["devices", device_id])?;
        let mut call = Call::new(op, target.clone(), Method::PUT, path, &[200, 201])
            .json(op, &target, device)?;
        if let Some(etag) = if_match {
            call = call.if_match(etag);
        }
        let reply = self.execute(call).await?;
        let mut device: Device = decode(op, &target, &reply)?;
        fill_etag(&mut device.etag, &reply.headers);
        Ok(device)
    }

    /// `DELETE /devices/{id}`; `if_match` `None` deletes unconditionally (`"*"`).
    pub async fn delete_device(
        &self,
        device_id: &str,
        if_match: Option<&str>,
    ) -> Result<(), HubError> {
        let op = HubOperation::DeleteDevice;
        let target = HubTarget::Device(device_id.to_string());
        let path = path(op, &target, &["devices", device_id])?;
        let call = Call::new(op, target, Method::DELETE, path, &[200, 204])
            .if_match(if_match.unwrap_or("*"));
        self.execute(call).await.map(|_| ())
    }

    /// `GET /devices/{id}/modules`.
    pub async fn list_modules(&self, device_id: &str) -> Result<Vec<Module>, HubError> {
        let op = HubOperation::ListModules;
        let target = HubTarget::Device(device_id.to_string());
        let path = path(op, &target, &["devices", device_id, "modules"])?;
        let reply = self
            .execute(Call::new(op, target.clone(), Method::GET, path, &[200]))
            .await?;
        decode(op, &target, &reply)
    }

    /// `POST /devices` in calls of at most `bulk_chunk_size` (≤ 100) entries. Each entry's
    /// `id` must be set and appear once (per module id). Per-entry failures and failed calls
    /// are returned in the outcome, in input order; after a call fails as a whole the remaining
    /// entries are not sent. Each call waits for one registry token per entry, since the hub
    /// counts bulk entries individually.
    pub async fn bulk_devices(
        &self,
        entries: &[ExportImportDevice],
    ) -> Result<BulkOutcome, HubError> {
        let op = HubOperation::BulkDevices;
        let mut seen = HashSet::new();
        for entry in entries {
            let id = required_id(op, entry.id.as_deref(), "ExportImportDevice.id")?;
            if !seen.insert((id, entry.module_id.as_deref())) {
                return Err(HubError::InvalidRequest {
                    operation: op,
                    target: HubTarget::Device(id.to_string()),
                    message:
                        "the device appears more than once in the bulk request; merge the entries"
                            .into(),
                });
            }
        }
        let chunk_size = self
            .inner
            .options
            .bulk_chunk_size
            .clamp(1, MAX_BULK_ENTRIES);
        let mut outcome = BulkOutcome::default();
        let mut failed: Option<HubError> = None;
        for chunk in entries.chunks(chunk_size) {
            if failed.is_some() {
                outcome.results.extend(
                    chunk
                        .iter()
                        .map(|e| entry_result(e, BulkDeviceOutcome::NotSent)),
                );
                continue;
            }
            outcome.calls += 1;
            match self.bulk_chunk(chunk).await {
                Ok(results) => outcome.results.extend(results),
                Err(error) => {
                    outcome.results.extend(
                        chunk.iter().map(|e| {
                            entry_result(e, BulkDeviceOutcome::RequestFailed(error.clone()))
                        }),
                    );
                    failed = Some(error);
                }
            }
        }
        Ok(outcome)
    }

    async fn bulk_chunk(
        &self,
        chunk: &[ExportImportDevice],
    ) -> Result<Vec<BulkDeviceResult>, HubError> {
        let op = HubOperation::BulkDevices;
        let target = HubTarget::Devices {
            first: chunk
                .iter()
                .take(3)
                .map(|e| e.id.clone().unwrap_or_default())
                .collect(),
            count: chunk.len(),
        };
        let mut call = Call::new(
            op,
            target.clone(),
            Method::POST,
            "/devices".into(),
            &[200, 400],
        )
        .json(op, &target, &chunk)?;
        call.cost = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        let reply = self.execute(call).await?;
        let parsed = serde_json::from_slice::<BulkRegistryOperationResult>(&reply.body)
            .ok()
            .filter(|r| r.is_successful.is_some());
        let Some(result) = parsed else {
            // A 400 that is not a bulk result is an ordinary error (bad body, duplicate ids).
            if reply.status == 400 {
                return Err(api_error(op, target, &reply));
            }
            return Err(HubError::InvalidResponse {
                operation: op,
                target,
                status: reply.status,
                message: "expected a BulkRegistryOperationResult".into(),
            });
        };
        let errors = result.errors.unwrap_or_default();
        if result.is_successful == Some(false) && errors.is_empty() {
            let error = HubError::Api {
                operation: op,
                target,
                status: reply.status,
                code: Some("BulkRegistryOperationFailure".into()),
                message: "the hub reported failure without per-device errors".into(),
                retry_after: None,
            };
            return Err(error);
        }
        let mut errors_by_entry: HashMap<(String, Option<String>), DeviceRegistryOperationError> =
            HashMap::new();
        for error in errors {
            let key = (
                error.device_id.clone().unwrap_or_default(),
                error.module_id.clone().filter(|m| !m.is_empty()),
            );
            errors_by_entry.entry(key).or_insert(error);
        }
        let mut warnings_by_device: HashMap<String, Vec<DeviceRegistryOperationWarning>> =
            HashMap::new();
        for warning in result.warnings.unwrap_or_default() {
            warnings_by_device
                .entry(warning.device_id.clone().unwrap_or_default())
                .or_default()
                .push(warning);
        }
        Ok(chunk
            .iter()
            .map(|entry| {
                let key = (
                    entry.id.clone().unwrap_or_default(),
                    entry.module_id.clone().filter(|m| !m.is_empty()),
                );
                let outcome = match errors_by_entry.remove(&key) {
                    Some(error) => BulkDeviceOutcome::Failed(error),
                    None => BulkDeviceOutcome::Succeeded {
                        warnings: warnings_by_device.remove(&key.0).unwrap_or_default(),
                    },
                };
                entry_result(entry, outcome)
            })
            .collect())
    }

    // ----- queries -----------------------------------------------------------------------

    /// `POST /devices/query`, following `x-ms-continuation` until the hub stops sending it.
    /// Returns every item (twins for `SELECT *`, objects for projections). Stops with an error
    /// at a continuation token it was given before (a loop, alternating or not), after
    /// [`MAX_QUERY_PAGES`] pages, and when the pages together exceed [`MAX_LIST_BODY_BYTES`].
    pub async fn query(&self, query: &str) -> Result<Vec<serde_json::Value>, HubError> {
        let op = HubOperation::Query;
        let target = HubTarget::Hub;
        let body = QuerySpecification {
            query: query.to_string(),
        };
        let mut items = Vec::new();
        let mut continuation: Option<String> = None;
        let mut seen: HashSet<String> = HashSet::new();
        let mut read = 0usize;
        for page in 1..=MAX_QUERY_PAGES {
            let mut call = Call::new(
                op,
                target.clone(),
                Method::POST,
                "/devices/query".into(),
                &[200],
            )
            .json(op, &target, &body)?;
            call.headers.push((
                "x-ms-max-item-count",
                self.inner.options.query_page_size.max(1).to_string(),
            ));
            if let Some(token) = &continuation {
                call.headers.push(("x-ms-continuation", token.clone()));
            }
            // The cap holds for the pages together, so a server cannot hand out the memory
            // in page-sized pieces.
            call.max_body = MAX_LIST_BODY_BYTES.saturating_sub(read);
            let reply = self.execute(call).await.map_err(|e| match e {
                HubError::TooLarge {
                    operation,
                    target,
                    host,
                    ..
                } => HubError::TooLarge {
                    operation,
                    target,
                    host,
                    limit_bytes: MAX_LIST_BODY_BYTES,
                },
                other => other,
            })?;
            read += reply.body.len();
            self.inner.counters.record_billed(op, reply.body.len());
            let rows: Vec<serde_json::Value> = decode(op, &target, &reply)?;
            items.extend(rows);
            let next = reply
                .headers
                .get("x-ms-continuation")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .filter(|t| !t.is_empty());
            let Some(token) = next else {
                return Ok(items);
            };
            if !seen.insert(token.clone()) {
                return Err(HubError::InvalidResponse {
                    operation: op,
                    target,
                    status: reply.status,
                    message: format!(
                        "{} returned a continuation token it had already given on an earlier page of this query (page {page}); stopping, since following it would loop forever",
                        self.host_name()
                    ),
                });
            }
            continuation = Some(token);
        }
        Err(HubError::InvalidResponse {
            operation: op,
            target,
            status: 200,
            message: format!(
                "{} was still sending continuation tokens after {MAX_QUERY_PAGES} pages; the operator's queries need one or two, so it stopped",
                self.host_name()
            ),
        })
    }

    /// [`HubClient::query`] for `SELECT * FROM devices` / `devices.modules` queries, each item
    /// read as a [`Twin`].
    pub async fn query_twins(&self, query: &str) -> Result<Vec<Twin>, HubError> {
        let items = self.query(query).await?;
        items
            .into_iter()
            .map(|item| {
                serde_json::from_value(item).map_err(|e| HubError::InvalidResponse {
                    operation: HubOperation::Query,
                    target: HubTarget::Hub,
                    status: 200,
                    message: format!("a query item is not a twin: {e}"),
                })
            })
            .collect()
    }

    // ----- twins -------------------------------------------------------------------------

    /// `GET /twins/{id}`.
    pub async fn get_twin(&self, device_id: &str) -> Result<Twin, HubError> {
        let op = HubOperation::GetTwin;
        let target = HubTarget::Device(device_id.to_string());
        let path = path(op, &target, &["twins", device_id])?;
        self.twin_call(Call::new(op, target, Method::GET, path, &[200]))
            .await
    }

    /// `PATCH /twins/{id}`: merges `patch` (typically only `tags` and/or
    /// `properties.desired`); `if_match` is the twin etag.
    pub async fn update_twin(
        &self,
        device_id: &str,
        patch: &Twin,
        if_match: Option<&str>,
    ) -> Result<Twin, HubError> {
        let op = HubOperation::UpdateTwin;
        let target = HubTarget::Device(device_id.to_string());
        let path = path(op, &target, &["twins", device_id])?;
        let mut call =
            Call::new(op, target.clone(), Method::PATCH, path, &[200]).json(op, &target, patch)?;
        if let Some(etag) = if_match {
            call = call.if_match(etag);
        }
        self.twin_call(call).await
    }

    /// `PUT /twins/{id}`: replaces tags and desired properties.
    pub async fn replace_twin(
        &self,
        device_id: &str,
        twin: &Twin,
        if_match: Option<&str>,
    ) -> Result<Twin, HubError> {
        let op = HubOperation::ReplaceTwin;
        let target = HubTarget::Device(device_id.to_string());
        let path = path(op, &target, &["twins", device_id])?;
        let mut call =
            Call::new(op, target.clone(), Method::PUT, path, &[200]).json(op, &target, twin)?;
        if let Some(etag) = if_match {
            call = call.if_match(etag);
        }
        self.twin_call(call).await
    }

    /// `GET /twins/{id}/modules/{mid}` (for example `$edgeAgent` for deployment health).
    pub async fn get_module_twin(
        &self,
        device_id: &str,
        module_id: &str,
    ) -> Result<Twin, HubError> {
        let op = HubOperation::GetModuleTwin;
        let target = HubTarget::Module {
            device_id: device_id.to_string(),
            module_id: module_id.to_string(),
        };
        let path = path(op, &target, &["twins", device_id, "modules", module_id])?;
        self.twin_call(Call::new(op, target, Method::GET, path, &[200]))
            .await
    }

    async fn twin_call(&self, call: Call) -> Result<Twin, HubError> {
        let (op, target) = (call.operation, call.target.clone());
        let sent = call.body.as_ref().map(Vec::len);
        let reply = self.execute(call).await?;
        // A read is billed by the twin returned, a write by the patch sent.
        self.inner
            .counters
            .record_billed(op, sent.unwrap_or(reply.body.len()));
        let mut twin: Twin = decode(op, &target, &reply)?;
        fill_etag(&mut twin.etag, &reply.headers);
        Ok(twin)
    }

    // ----- configurations ----------------------------------------------------------------

    /// `GET /configurations/{id}`.
    pub async fn get_configuration(&self, id: &str) -> Result<Configuration, HubError> {
        let op = HubOperation::GetConfiguration;
        let target = HubTarget::Configuration(id.to_string());
        let path = path(op, &target, &["configurations", id])?;
        self.configuration_call(Call::new(op, target, Method::GET, path, &[200]))
            .await
    }

    /// `PUT /configurations/{id}` with the id from `configuration.id`. Without `if_match` a
    /// create (409 if it exists); with it an update of the mutable parts (target condition,
    /// priority, labels, metrics).
    pub async fn create_or_update_configuration(
        &self,
        configuration: &Configuration,
        if_match: Option<&str>,
    ) -> Result<Configuration, HubError> {
        let op = HubOperation::CreateOrUpdateConfiguration;
        let id = required_id(op, configuration.id.as_deref(), "configuration.id")?;
        let target = HubTarget::Configuration(id.to_string());
        let path = path(op, &target, &["configurations", id])?;
        let mut call = Call::new(op, target.clone(), Method::PUT, path, &[200, 201]).json(
            op,
            &target,
            configuration,
        )?;
        if let Some(etag) = if_match {
            call = call.if_match(etag);
        }
        self.configuration_call(call).await
    }

    /// `DELETE /configurations/{id}`; `if_match` `None` deletes unconditionally (`"*"`).
    pub async fn delete_configuration(
        &self,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), HubError> {
        let op = HubOperation::DeleteConfiguration;
        let target = HubTarget::Configuration(id.to_string());
        let path = path(op, &target, &["configurations", id])?;
        let call = Call::new(op, target, Method::DELETE, path, &[200, 204])
            .if_match(if_match.unwrap_or("*"));
        self.execute(call).await.map(|_| ())
    }

    /// `GET /configurations[?top=N]` (the hub does not page this list).
    pub async fn list_configurations(
        &self,
        top: Option<u32>,
    ) -> Result<Vec<Configuration>, HubError> {
        let op = HubOperation::ListConfigurations;
        let target = HubTarget::Hub;
        let mut call = Call::new(
            op,
            target.clone(),
            Method::GET,
            "/configurations".into(),
            &[200],
        );
        if let Some(top) = top {
            call.query.push(("top", top.to_string()));
        }
        let reply = self.execute(call).await?;
        decode(op, &target, &reply)
    }

    /// `POST /devices/{id}/applyConfigurationContent` (a single-device deployment;
    /// `modulesContent` is required by the hub). The hub answers 204; 200 is accepted too.
    pub async fn apply_configuration_content(
        &self,
        device_id: &str,
        content: &ConfigurationContent,
    ) -> Result<(), HubError> {
        let op = HubOperation::ApplyConfigurationContent;
        let target = HubTarget::Device(device_id.to_string());
        let path = path(
            op,
            &target,
            &["devices", device_id, "applyConfigurationContent"],
        )?;
        let call = Call::new(op, target.clone(), Method::POST, path, &[200, 204])
            .json(op, &target, content)?;
        self.execute(call).await.map(|_| ())
    }

    async fn configuration_call(&self, call: Call) -> Result<Configuration, HubError> {
        let (op, target) = (call.operation, call.target.clone());
        let reply = self.execute(call).await?;
        let mut configuration: Configuration = decode(op, &target, &reply)?;
        fill_etag(&mut configuration.etag, &reply.headers);
        Ok(configuration)
    }

    // ----- pipeline ----------------------------------------------------------------------

    async fn execute(&self, call: Call) -> Result<Reply, HubError> {
        let inner = &self.inner;
        let class = call.operation.class();
        let mut url = format!("{}{}?api-version={API_VERSION}", inner.base_url, call.path);
        for (name, value) in &call.query {
            url.push('&');
            url.push_str(name);
            url.push('=');
            url.extend(utf8_percent_encode(value, SEGMENT));
        }
        let budget = inner.options.call_budget;
        let hub = self.share.hub();
        let deadline_error = |attempts: u32, message: String| HubError::DeadlineExceeded {
            operation: call.operation,
            target: call.target.clone(),
            host: self.host_name().to_string(),
            budget,
            attempts,
            message,
        };
        // The budget starts when the limiter first lets the call go: the pacing before that is
        // the operator's own, bounded by the quota; everything after counts.
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut attempt = 0;
        let mut answered = false;
        loop {
            let waited = match deadline {
                None => self.share.acquire(class, call.cost).await,
                // A retry waits for the rate budget (and a 429's block) within the call's own.
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.share.acquire(class, call.cost))
                        .await
                    {
                        Ok(waited) => waited,
                        Err(_) => {
                            return Err(deadline_error(
                                attempt,
                                "the budget ran out waiting for the hub's rate budget to retry"
                                    .into(),
                            ));
                        }
                    }
                }
            };
            inner.counters.record_rate_limit_wait(waited);
            let now = tokio::time::Instant::now();
            let deadline = *deadline.get_or_insert(now + budget);
            if let Some(until) = hub.paused_until() {
                return Err(HubError::Paused {
                    operation: call.operation,
                    target: call.target.clone(),
                    host: self.host_name().to_string(),
                    remaining: until.saturating_duration_since(now),
                });
            }
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return Err(deadline_error(
                    attempt,
                    "the budget was spent waiting to retry".into(),
                ));
            }
            attempt += 1;
            let mut sending = false;
            let sent = tokio::time::timeout(remaining, async {
                let _slot = hub.slot().await;
                sending = true;
                self.send_once(&call, &url, remaining).await
            })
            .await;
            let outcome = match sent {
                Ok(outcome) => outcome,
                Err(_) if !sending => {
                    return Err(deadline_error(
                        attempt - 1,
                        format!(
                            "every one of the {MAX_IN_FLIGHT_PER_HUB} in-flight slots of this hub stayed taken by calls waiting for its answers"
                        ),
                    ));
                }
                Err(_) => {
                    inner
                        .counters
                        .record(call.operation, CallResult::TransportError);
                    let pause = hub.note_unanswered();
                    return Err(deadline_error(
                        attempt,
                        format!(
                            "the hub did not answer in time; calls to it fail at once for {}s",
                            pause.as_secs()
                        ),
                    ));
                }
            };
            let outcome = match outcome {
                Err(error @ HubError::TooLarge { .. }) => {
                    hub.note_answered();
                    inner
                        .counters
                        .record(call.operation, CallResult::TransportError);
                    return Err(error);
                }
                Err(other) => return Err(other),
                Ok(outcome) => outcome,
            };

            match outcome {
                Err(error) => {
                    let kind = if error.is_timeout() {
                        TransportKind::Timeout
                    } else if error.is_connect() {
                        TransportKind::Connect
                    } else {
                        TransportKind::Io
                    };
                    inner
                        .counters
                        .record(call.operation, CallResult::TransportError);
                    let failure = HubError::Transport {
                        operation: call.operation,
                        target: call.target.clone(),
                        kind,
                        message: scrub(&error_chain(&error)),
                    };
                    let decision = inner.options.retry.decide(
                        attempt,
                        AttemptOutcome::Transport(kind),
                        rand::random::<f64>(),
                    );
                    let delay = match decision {
                        RetryDecision::RetryAfter(delay)
                            if tokio::time::Instant::now() + delay < deadline =>
                        {
                            Some(delay)
                        }
                        _ => None,
                    };
                    let Some(delay) = delay else {
                        // Every attempt timed out: the hub took the calls and gave nothing back.
                        let pause = (kind == TransportKind::Timeout && !answered)
                            .then(|| hub.note_unanswered())
                            .map(|p| {
                                format!("; calls to this hub fail at once for {}s", p.as_secs())
                            })
                            .unwrap_or_default();
                        return Err(match (decision, failure) {
                            (RetryDecision::RetryAfter(_), failure) => {
                                deadline_error(attempt, format!("{failure}{pause}"))
                            }
                            (
                                RetryDecision::GiveUp,
                                HubError::Transport {
                                    operation,
                                    target,
                                    kind,
                                    message,
                                },
                            ) => HubError::Transport {
                                operation,
                                target,
                                kind,
                                message: format!("{message}{pause}"),
                            },
                            (RetryDecision::GiveUp, other) => other,
                        });
                    };
                    tracing::debug!(
                        operation = %call.operation, target = %call.target, attempt,
                        delay_ms = delay.as_millis() as u64, error = %kind,
                        "IoT Hub call failed to connect; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                Ok(reply) => {
                    answered = true;
                    hub.note_answered();
                    inner
                        .counters
                        .record(call.operation, CallResult::Status(reply.status));
                    if call.accept.contains(&reply.status) {
                        return Ok(reply);
                    }
                    let retry_after = reply
                        .headers
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
                    let decision = inner.options.retry.decide(
                        attempt,
                        AttemptOutcome::Status {
                            status: reply.status,
                            retry_after,
                        },
                        rand::random::<f64>(),
                    );
                    let RetryDecision::RetryAfter(delay) = decision else {
                        return Err(self.api_error(call.operation, call.target.clone(), &reply));
                    };
                    if tokio::time::Instant::now() + delay >= deadline {
                        let failure = self.api_error(call.operation, call.target.clone(), &reply);
                        return Err(deadline_error(attempt, failure.to_string()));
                    }
                    tracing::debug!(
                        operation = %call.operation, target = %call.target, attempt,
                        status = reply.status, delay_ms = delay.as_millis() as u64,
                        "IoT Hub call failed transiently; retrying"
                    );
                    if reply.status == 429 {
                        // Hold back every caller of this throttle class, not only this one;
                        // the next acquire() waits out the block.
                        self.share.block_for(class, delay);
                    } else {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }

    /// One attempt of `call` at `url` within `timeout`: the reply, or why none came. Fails
    /// only when no request can be built or the body is larger than `call.max_body`.
    async fn send_once(
        &self,
        call: &Call,
        url: &str,
        timeout: Duration,
    ) -> Result<Result<Reply, reqwest::Error>, HubError> {
        let inner = &self.inner;
        let token = inner.tokens.token();
        let mut authorization = HeaderValue::from_str(token.header_value()).map_err(|_| {
            HubError::Setup {
                host: self.host_name().to_string(),
                message: "the SAS token is not a valid header value; check the policy name in the connection string".into(),
            }
        })?;
        authorization.set_sensitive(true);
        let mut request = inner
            .http
            .request(call.method.clone(), url)
            .timeout(timeout.min(inner.options.request_timeout))
            .header(AUTHORIZATION, authorization)
            .header(ACCEPT, "application/json");
        for (name, value) in &call.headers {
            request = request.header(*name, value);
        }
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json; charset=utf-8")
                .body(body.clone());
        }

        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Ok(Err(e)),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let too_large = || HubError::TooLarge {
            operation: call.operation,
            target: call.target.clone(),
            host: self.host_name().to_string(),
            limit_bytes: call.max_body,
        };
        // A declared length over the cap is refused before a byte of the body is read.
        let declared = response.content_length().unwrap_or(0);
        if declared > call.max_body as u64 {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(declared as usize);
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > call.max_body {
                        // Dropping the response closes the connection mid-body.
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(Reply {
            status,
            headers,
            body,
        }))
    }

    /// The error for a reply with a status the call does not accept.
    fn api_error(&self, operation: HubOperation, target: HubTarget, reply: &Reply) -> HubError {
        let mut error = api_error(operation, target, reply);
        if (300..400).contains(&reply.status)
            && let HubError::Api { message, .. } = &mut error
        {
            let location = reply
                .headers
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| format!(" to {}", scrub(l)))
                .unwrap_or_default();
            *message = format!(
                "{} answered with a redirect{location}, which the operator never follows (IoT Hub does not redirect); check that HostName in the connection string names the hub",
                self.host_name()
            );
        }
        error
    }
}

impl Call {
    fn new(
        operation: HubOperation,
        target: HubTarget,
        method: Method,
        path: String,
        accept: &'static [u16],
    ) -> Call {
        Call {
            operation,
            target,
            method,
            path,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            cost: 1,
            accept,
            max_body: match operation {
                HubOperation::Query
                | HubOperation::ListConfigurations
                | HubOperation::ListModules => MAX_LIST_BODY_BYTES,
                _ => MAX_OBJECT_BODY_BYTES,
            },
        }
    }

    fn json<T: Serialize + ?Sized>(
        mut self,
        operation: HubOperation,
        target: &HubTarget,
        body: &T,
    ) -> Result<Call, HubError> {
        let bytes = serde_json::to_vec(body).map_err(|e| HubError::InvalidRequest {
            operation,
            target: target.clone(),
            message: format!("the request body could not be serialized: {e}"),
        })?;
        self.body = Some(bytes);
        Ok(self)
    }

    fn if_match(mut self, etag: &str) -> Call {
        self.headers.push(("if-match", quote_etag(etag)));
        self
    }
}

fn entry_result(entry: &ExportImportDevice, outcome: BulkDeviceOutcome) -> BulkDeviceResult {
    BulkDeviceResult {
        device_id: entry.id.clone().unwrap_or_default(),
        module_id: entry.module_id.clone(),
        outcome,
    }
}

fn api_error(operation: HubOperation, target: HubTarget, reply: &Reply) -> HubError {
    let header_code = reply
        .headers
        .get("iothub-errorcode")
        .and_then(|v| v.to_str().ok());
    let parsed = parse_error(header_code, &reply.body);
    let retry_after = reply
        .headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
    HubError::Api {
        operation,
        target,
        status: reply.status,
        code: parsed.code,
        message: parsed.message,
        retry_after,
    }
}

fn decode<T: DeserializeOwned>(
    operation: HubOperation,
    target: &HubTarget,
    reply: &Reply,
) -> Result<T, HubError> {
    serde_json::from_slice(&reply.body).map_err(|e| HubError::InvalidResponse {
        operation,
        target: target.clone(),
        status: reply.status,
        message: format!("body does not match the API model: {e}"),
    })
}

/// Builds `/seg/seg/...` with every segment percent-encoded. Ids the URL syntax cannot carry
/// (empty, `.`, `..`, which URL parsers collapse even when encoded) are refused.
fn path(
    operation: HubOperation,
    target: &HubTarget,
    segments: &[&str],
) -> Result<String, HubError> {
    let mut out = String::new();
    for segment in segments {
        if segment.is_empty() || *segment == "." || *segment == ".." {
            return Err(HubError::InvalidRequest {
                operation,
                target: target.clone(),
                message: format!(
                    "the id {segment:?} cannot be used in a request path; ids must be non-empty and not '.' or '..'"
                ),
            });
        }
        out.push('/');
        out.extend(utf8_percent_encode(segment, SEGMENT));
    }
    Ok(out)
}

fn required_id<'a>(
    operation: HubOperation,
    id: Option<&'a str>,
    field: &str,
) -> Result<&'a str, HubError> {
    match id {
        Some(id) if !id.is_empty() => Ok(id),
        _ => Err(HubError::InvalidRequest {
            operation,
            target: HubTarget::Hub,
            message: format!("{field} is required; set it to the id to write"),
        }),
    }
}

/// `If-Match` value: clients send etags quoted (`"MA=="`), and the wildcard as `"*"`.
pub fn quote_etag(etag: &str) -> String {
    let etag = etag.trim();
    if etag.len() >= 2 && etag.starts_with('"') && etag.ends_with('"') {
        etag.to_string()
    } else {
        format!("\"{etag}\"")
    }
}

/// The response's `ETag` header without quotes or a weak marker.
fn header_etag(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(reqwest::header::ETAG)?.to_str().ok()?.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    (!value.is_empty()).then(|| value.to_string())
}

/// The hub treats the `ETag` header as authoritative; use it when the body has no etag.
fn fill_etag(etag: &mut Option<String>, headers: &HeaderMap) {
    if etag.as_deref().is_none_or(str::is_empty)
        && let Some(from_header) = header_etag(headers)
    {
        *etag = Some(from_header);
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        let target = HubTarget::Hub;
        let op = HubOperation::GetDevice;
        assert_eq!(
            path(op, &target, &["twins", "edge1", "modules", "$edgeAgent"]).unwrap(),
            "/twins/edge1/modules/%24edgeAgent"
        );
        assert_eq!(
            path(
                op,
                &target,
                &["devices", "a#b?c%d/e f+g:h;i=j@k!l*m(n)o,p'q.r-s_t~u"]
            )
            .unwrap(),
            "/devices/a%23b%3Fc%25d%2Fe%20f%2Bg%3Ah%3Bi%3Dj%40k%21l%2Am%28n%29o%2Cp%27q.r-s_t~u"
        );
        for bad in ["", ".", ".."] {
            let err = path(op, &HubTarget::Device(bad.into()), &["devices", bad]).unwrap_err();
            assert!(matches!(err, HubError::InvalidRequest { .. }), "{err}");
        }
        // Dots inside an id are fine.
        assert_eq!(
            path(op, &target, &["devices", "a..b"]).unwrap(),
            "/devices/a..b"
        );
    }

    #[test]
    fn etags_are_quoted_once() {
        assert_eq!(quote_etag("MA=="), "\"MA==\"");
        assert_eq!(quote_etag("\"MA==\""), "\"MA==\"");
        assert_eq!(quote_etag("*"), "\"*\"");
    }

    #[test]
    fn etag_header_is_unquoted_and_fills_a_missing_body_etag() {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::ETAG,
            HeaderValue::from_static("W/\"AAAAAAAAAAE=\""),
        );
        let mut etag = None;
        fill_etag(&mut etag, &headers);
        assert_eq!(etag.as_deref(), Some("AAAAAAAAAAE="));
        let mut body_etag = Some("body".to_string());
        fill_etag(&mut body_etag, &headers);
        assert_eq!(body_etag.as_deref(), Some("body"));
    }

    #[test]
    fn bulk_outcome_helpers() {
        let error = HubError::Api {
            operation: HubOperation::BulkDevices,
            target: HubTarget::Hub,
            status: 503,
            code: None,
            message: "busy".into(),
            retry_after: None,
        };
        let outcome = BulkOutcome {
            results: vec![
                BulkDeviceResult {
                    device_id: "a".into(),
                    module_id: None,
                    outcome: BulkDeviceOutcome::Succeeded { warnings: vec![] },
                },
                BulkDeviceResult {
                    device_id: "b".into(),
                    module_id: None,
                    outcome: BulkDeviceOutcome::RequestFailed(error.clone()),
                },
                BulkDeviceResult {
                    device_id: "c".into(),
                    module_id: None,
                    outcome: BulkDeviceOutcome::NotSent,
                },
            ],
            calls: 2,
        };
        assert!(!outcome.all_succeeded());
        assert_eq!(
            outcome
                .failures()
                .map(|r| r.device_id.as_str())
                .collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert_eq!(outcome.request_error(), Some(&error));
    }
}
