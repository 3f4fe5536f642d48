//! The HTTP pipeline of one request: route, latency, api-version, authentication, fault
//! injection, body checks, quota, the hub operation, the response, the stats.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::auth::{AccessPolicy, AuthError, Permission, SasToken, parse_token};
use crate::clock::{Clock, format_timestamp, format_tracking_time};
use crate::error::{ErrorCode, HubError};
use crate::hub::{Hub, IfMatch, Reply, bulk_units as hub_bulk_units};
use crate::meter::Meter;
use crate::realism::billed_messages;
use crate::routes::{Access, OperationClass, Route, RouteError, decode_segments, route};
use crate::stats::{Record, Stats};
use crate::strict;
use crate::throttle::Throttle;

/// api-versions the emulator serves.
pub const API_VERSIONS: [&str; 3] = ["2020-03-13", "2021-04-12", "2024-03-31"];
/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// State shared by all connections.
pub struct Shared {
    pub(crate) hub: Mutex<Hub>,
    pub(crate) stats: Stats,
    pub(crate) throttle: Throttle,
    pub(crate) clock: std::sync::Arc<dyn Clock>,
    pub(crate) policies: Vec<AccessPolicy>,
    /// Host names a token's `sr` may name (compared case-insensitively).
    pub(crate) hosts: Vec<String>,
    pub(crate) latency_ms: AtomicU64,
    /// Fault rate in parts per million.
    pub(crate) fault_ppm: AtomicU64,
    /// Share of requests answered with an injected 429 without `Retry-After`, in parts per
    /// million (`throttleRate` of `PUT /_emulator/faults`).
    pub(crate) throttle_ppm: AtomicU64,
    /// `true` while an outage (`PUT /_emulator/outage`) is on: the listener is closed and every
    /// open connection is dropped.
    pub(crate) down: tokio::sync::watch::Sender<bool>,
    pub(crate) strict: bool,
    /// The daily message meter and quota.
    pub(crate) meter: Meter,
    /// How long a request over a throttle may wait for the next window (`--throttle-shaping-ms`).
    pub(crate) throttle_shaping_ms: u64,
    /// Whether 429 answers carry `Retry-After` (not with `--no-retry-after`).
    pub(crate) retry_after: bool,
    /// Every mutating request, for `GET /_emulator/writes`.
    pub(crate) writes: crate::writes::WriteLog,
}

impl Shared {
    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current fault rate (0..=1).
    pub fn fault_rate(&self) -> f64 {
        self.fault_ppm.load(Ordering::Relaxed) as f64 / 1_000_000.0
    }

    /// Sets the fault rate (clamped to 0..=1).
    pub fn set_fault_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        self.fault_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Current injected 429 rate (0..=1).
    pub fn throttle_rate(&self) -> f64 {
        self.throttle_ppm.load(Ordering::Relaxed) as f64 / 1_000_000.0
    }

    /// Sets the injected 429 rate (clamped to 0..=1).
    pub fn set_throttle_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        self.throttle_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Takes the hub down for `duration`: a moment from now (so the answer to the request that
    /// asked gets out) the listener closes and open connections drop; after `duration` it
    /// listens on the same port again, with everything it held.
    pub fn start_outage(&self, duration: std::time::Duration) {
        let down = self.down.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            tracing::warn!(?duration, "outage: the hub is down");
            down.send_replace(true);
            tokio::time::sleep(duration).await;
            down.send_replace(false);
            tracing::warn!("outage over: the hub is back");
        });
    }

    /// The JSON of `GET /_emulator/stats`: request counters plus the message meter.
    pub fn stats_snapshot(&self) -> Value {
        let mut snapshot = self.stats.snapshot();
        if let Some(object) = snapshot.as_object_mut() {
            object.insert(
                "messages".into(),
                self.meter.snapshot(self.clock.now_millis()),
            );
            object.insert(
                "configurationEvaluation".into(),
                self.hub().evaluation_status(),
            );
        }
        snapshot
    }
}

/// What the pipeline learned about a request besides its answer, for stats and metering.
#[derive(Debug, Default)]
struct Meta {
    /// Quota units taken.
    units: u64,
    /// Answered with an injected fault.
    fault: bool,
    /// Size of the request body.
    request_bytes: usize,
    /// Time spent queued by traffic shaping.
    shaped_ms: u64,
}

/// Bytes an answered request is billed for, if its operation is billed (Learn, "Azure IoT Hub
/// billing information": twin reads and queries by what they return, twin updates, reported
/// patches, telemetry and applyConfigurationContent by what they send; registry and
/// configuration operations are free).
fn billed_bytes(route: &Route, request_bytes: usize, response_bytes: usize) -> Option<usize> {
    use Route::*;
    match route {
        QueryTwins | GetTwin(_) | GetModuleTwin(..) | DeviceReadTwin(..) => Some(response_bytes),
        UpdateTwin(_)
        | ReplaceTwin(_)
        | UpdateModuleTwin(..)
        | ReplaceModuleTwin(..)
        | DevicePatchReported(..)
        | DeviceSendEvent(..)
        | ApplyConfigurationContent(_) => Some(request_bytes),
        _ => None,
    }
}

/// Everything about the request the pipeline needs after the body is split off.
struct RequestInfo {
    method: String,
    segments: Vec<String>,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    host: Option<String>,
}

impl RequestInfo {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_query_string(raw: Option<&str>) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    raw.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn tracking_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Statistics class of a route.
fn stats_class(route: &Route) -> &'static str {
    use Route::*;
    match route {
        DeviceReadTwin(..) | DevicePatchReported(..) | DeviceSendEvent(..) => "device",
        DeviceStatistics | ServiceStatistics => "statistics",
        GetConfiguration(_) | TestQueries => "configurations",
        other => other.class().name(),
    }
}

/// Serves one request.
pub async fn handle(
    shared: &Shared,
    request: Request<Incoming>,
    client_thumbprints: &[String],
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let Some(segments) = decode_segments(parts.uri.path()) else {
        let error =
            HubError::bad_request("the request path is not valid UTF-8 after percent-decoding");
        return error_response(shared, &error);
    };
    let info = RequestInfo {
        method: parts.method.as_str().to_string(),
        segments,
        query: parse_query_string(parts.uri.query()),
        headers: parts.headers,
        host,
    };
    let route = match route(&info.method, &info.segments) {
        Ok(route) => route,
        Err(kind) => {
            let error = match kind {
                RouteError::NotFound => HubError::new(
                    ErrorCode::GenericNotFound,
                    format!(
                        "{} /{} is not an IoT Hub service operation",
                        info.method,
                        info.segments.join("/")
                    ),
                ),
                RouteError::MethodNotAllowed => HubError::new(
                    ErrorCode::GenericMethodNotAllowed,
                    format!(
                        "/{} does not support {}",
                        info.segments.join("/"),
                        info.method
                    ),
                ),
            };
            shared.stats.record(Record {
                operation: "unrouted",
                class: "unrouted",
                is_write: false,
                status: error.status(),
                units: 0,
                fault: false,
                shaped_ms: 0,
            });
            return error_response(shared, &error);
        }
    };
    if route.is_emulator_control() {
        let body = read_body(body).await;
        return match emulator_control(shared, &route, body) {
            Ok(reply) => reply_response(reply).0,
            Err(error) => error_response(shared, &error),
        };
    }
    let arrived = shared.clock.now_millis();
    let write_of = route.is_write().then(|| crate::writes::Write {
        at_millis: arrived,
        method: info.method.clone(),
        path: format!("/{}", info.segments.join("/")),
        user_agent: info
            .header(hyper::header::USER_AGENT.as_str())
            .unwrap_or_default()
            .to_string(),
        status: 0,
    });
    let latency = shared.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    let has_if_match = info.headers.contains_key(hyper::header::IF_MATCH);
    let operation = route.name(has_if_match);
    let mut meta = Meta::default();
    let outcome = process(shared, &route, &info, body, client_thumbprints, &mut meta).await;
    let response = match outcome {
        Ok(reply) => {
            let (response, response_bytes) = reply_response(reply);
            if response.status().is_success()
                && let Some(bytes) = billed_bytes(&route, meta.request_bytes, response_bytes)
            {
                shared
                    .meter
                    .charge(operation, billed_messages(bytes), shared.clock.now_millis());
            }
            response
        }
        Err(error) => error_response(shared, &error),
    };
    if let Some(write) = write_of {
        shared.writes.record(crate::writes::Write {
            status: response.status().as_u16(),
            ..write
        });
    }
    shared.stats.record(Record {
        operation,
        class: stats_class(&route),
        is_write: route.is_write(),
        status: response.status().as_u16(),
        units: meta.units,
        fault: meta.fault,
        shaped_ms: meta.shaped_ms,
    });
    response
}

async fn read_body(body: Incoming) -> Result<Bytes, HubError> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(HubError::bad_request(format!(
            "the request body could not be read or is larger than {MAX_BODY_BYTES} bytes"
        ))),
    }
}

/// The swagger model a route's body must match in `--strict`.
fn strict_model(route: &Route) -> Option<strict::Ty> {
    use Route::*;
    use strict::Ty;
    Some(match route {
        PutDevice(_) => Ty::Model(&strict::DEVICE),
        BulkRegistry => strict::BULK_BODY,
        QueryTwins => Ty::Model(&strict::QUERY_SPECIFICATION),
        PutModule(..) => Ty::Model(&strict::MODULE),
        UpdateTwin(_) | ReplaceTwin(_) | UpdateModuleTwin(..) | ReplaceModuleTwin(..) => {
            Ty::Model(&strict::TWIN)
        }
        PutConfiguration(_) => Ty::Model(&strict::CONFIGURATION),
        TestQueries => Ty::Model(&strict::CONFIGURATION_QUERIES_TEST_INPUT),
        ApplyConfigurationContent(_) => Ty::Model(&strict::CONFIGURATION_CONTENT),
        _ => return None,
    })
}

fn takes_json_body(route: &Route) -> bool {
    strict_model(route).is_some() || matches!(route, Route::DevicePatchReported(..))
}

async fn process(
    shared: &Shared,
    route: &Route,
    info: &RequestInfo,
    body: Incoming,
    client_thumbprints: &[String],
    meta: &mut Meta,
) -> Result<Reply, HubError> {
    match info.param("api-version") {
        Some(v) if API_VERSIONS.contains(&v) => {}
        Some(v) => {
            return Err(HubError::new(
                ErrorCode::InvalidProtocolVersion,
                format!(
                    "api-version '{v}' is not supported; use one of {}",
                    API_VERSIONS.join(", ")
                ),
            ));
        }
        None => {
            return Err(HubError::new(
                ErrorCode::InvalidProtocolVersion,
                format!(
                    "the api-version query parameter is missing; use one of {}",
                    API_VERSIONS.join(", ")
                ),
            ));
        }
    }
    authorize(shared, route, info, client_thumbprints)?;
    shared.meter.check(shared.clock.now_millis())?;
    let storm = shared.throttle_rate();
    if storm > 0.0 && rand::random::<f64>() < storm {
        // Counted as throttled (a 429), not as a fault; no Retry-After, as Azure may answer.
        return Err(HubError::new(
            ErrorCode::ThrottlingException,
            "Request was throttled (injected: throttleRate of /_emulator/faults); retry later",
        ));
    }
    let rate = shared.fault_rate();
    if rate > 0.0 && rand::random::<f64>() < rate {
        meta.fault = true;
        return Err(if rand::random::<bool>() {
            HubError::new(
                ErrorCode::ServerError,
                "injected fault (--fault-rate): internal server error; retry",
            )
        } else {
            HubError::new(
                ErrorCode::ServiceUnavailable,
                "injected fault (--fault-rate): service unavailable; retry",
            )
        });
    }
    let bytes = read_body(body).await?;
    meta.request_bytes = bytes.len();
    let json_body = if takes_json_body(route) {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(HubError::bad_request(
                "the request body is empty; send a JSON document",
            ));
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            HubError::new(
                ErrorCode::IotHubFormatError,
                format!("the request body is not valid JSON: {e}"),
            )
        })?;
        if shared.strict
            && let Some(model) = strict_model(route)
        {
            strict::validate(&value, &model, "$").map_err(|m| {
                HubError::bad_request(format!("{m} (--strict checks bodies against the swagger)"))
            })?;
        }
        value
    } else {
        Value::Null
    };
    let class = route.class();
    let cost = if *route == Route::BulkRegistry {
        hub_bulk_units(&json_body)
    } else {
        1
    };
    meta.shaped_ms = acquire(shared, class, cost).await?;
    if class != OperationClass::Unthrottled {
        meta.units = cost;
    }
    let now = shared.clock.now_millis();
    let mut hub = shared.hub();
    hub.tick(now);
    let result = dispatch(&mut hub, route, info, &json_body, now);
    hub.publish_changes(now);
    drop(hub);
    if result.is_ok()
        && let Route::DeviceSendEvent(device, module) = route
    {
        shared.stats.record_telemetry(match module {
            Some(m) => format!("{device}/{m}"),
            None => device.clone(),
        });
    }
    result
}

/// Takes `cost` units of `class` from the throttle. Over the limit, the request waits for the
/// next window as long as `--throttle-shaping-ms` allows (Azure queues such requests before it
/// refuses them); then it gets 429. Answers the time waited.
async fn acquire(shared: &Shared, class: OperationClass, cost: u64) -> Result<u64, HubError> {
    let budget = i64::try_from(shared.throttle_shaping_ms).unwrap_or(i64::MAX);
    let mut waited: i64 = 0;
    loop {
        let now = shared.clock.now_millis();
        let Err(wait_ms) = shared.throttle.try_acquire_ms(class, cost, now) else {
            return Ok(u64::try_from(waited).unwrap_or(0));
        };
        if waited.saturating_add(wait_ms) <= budget {
            let ms = u64::try_from(wait_ms).unwrap_or(1);
            if !shared.clock.skip_wait(ms) {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            waited += wait_ms;
            continue;
        }
        let wait = u64::try_from((wait_ms + 999) / 1000).unwrap_or(1).max(1);
        let limit = shared.throttle.limit(class);
        let mut error = HubError::new(
            ErrorCode::ThrottlingException,
            format!(
                "Request was throttled: the {} quota ({} per {} s) is used up; retry after {wait} s",
                class.name(),
                limit.map_or(0, |l| l.limit),
                limit.map_or(0, |l| l.window_ms / 1000),
            ),
        );
        error.retry_after_secs = Some(wait);
        return Err(error);
    }
}

/// Runs the hub operation of a route.
fn dispatch(
    hub: &mut Hub,
    route: &Route,
    info: &RequestInfo,
    json_body: &Value,
    now: i64,
) -> Result<Reply, HubError> {
    let if_match = IfMatch::parse(info.header("if-match"));
    let top = info.param("top").and_then(|t| t.parse::<i64>().ok());
    use Route::*;
    match route {
        ListDevices => Ok(hub.list_devices(top)),
        BulkRegistry => hub.bulk(json_body, now),
        QueryTwins => hub.query(
            json_body,
            info.header("x-ms-max-item-count"),
            info.header("x-ms-continuation"),
            now,
        ),
        PutDevice(id) => hub.put_device(id, json_body, &if_match, now),
        GetDevice(id) => hub.get_device(id),
        DeleteDevice(id) => hub.delete_device(id, &if_match),
        ApplyConfigurationContent(id) => hub.apply_configuration_content(id, json_body, now),
        ListModules(id) => hub.list_modules(id),
        PutModule(d, m) => hub.put_module(d, m, json_body, &if_match, now),
        GetModule(d, m) => hub.get_module(d, m),
        DeleteModule(d, m) => hub.delete_module(d, m, &if_match),
        GetTwin(id) => hub.get_twin(id),
        UpdateTwin(id) => hub.write_device_twin(id, json_body, &if_match, false, now),
        ReplaceTwin(id) => hub.write_device_twin(id, json_body, &if_match, true, now),
        GetModuleTwin(d, m) => hub.get_module_twin(d, m),
        UpdateModuleTwin(d, m) => hub.write_module_twin(d, m, json_body, &if_match, false, now),
        ReplaceModuleTwin(d, m) => hub.write_module_twin(d, m, json_body, &if_match, true, now),
        ListConfigurations => Ok(hub.list_configurations(top)),
        TestQueries => hub.test_queries(json_body),
        PutConfiguration(id) => hub.put_configuration(id, json_body, &if_match, now),
        GetConfiguration(id) => hub.get_configuration(id),
        DeleteConfiguration(id) => hub.delete_configuration(id, &if_match, now),
        DeviceStatistics => Ok(hub.device_statistics()),
        ServiceStatistics => Ok(hub.service_statistics()),
        DeviceReadTwin(d, m) => hub.device_read_twin(d, m.as_deref()),
        DevicePatchReported(d, m) => hub.device_patch_reported(d, m.as_deref(), json_body, now),
        DeviceSendEvent(d, m) => hub.device_send_event(d, m.as_deref(), now),
        EmulatorStats | EmulatorStatsReset | EmulatorGetFaults | EmulatorSetFaults
        | EmulatorOutage | EmulatorWrites => {
            unreachable!("handled before")
        }
    }
}

fn auth_error(error: AuthError) -> HubError {
    HubError::unauthorized(error.to_string())
}

/// Checks the credentials of a request against what its route needs.
fn authorize(
    shared: &Shared,
    route: &Route,
    info: &RequestInfo,
    client_thumbprints: &[String],
) -> Result<(), HubError> {
    let now_secs = shared.clock.now_millis().div_euclid(1000);
    let mut hosts = shared.hosts.clone();
    if let Some(host) = &info.host {
        hosts.push(host.to_ascii_lowercase());
    }
    let token = match info.header("authorization") {
        Some(header) => Some(parse_token(header).map_err(auth_error)?),
        None => None,
    };
    let needed = match route.access() {
        Access::Open => return Ok(()),
        Access::Service(permission) => permission,
        Access::Device {
            device_id,
            module_id,
        } => {
            if token.as_ref().is_none_or(|t| t.key_name.is_none()) {
                return shared
                    .hub()
                    .authenticate_device(
                        &device_id,
                        module_id.as_deref(),
                        token.as_ref(),
                        client_thumbprints,
                        &hosts,
                        now_secs,
                    )
                    .map_err(auth_error);
            }
            Permission::DeviceConnect
        }
    };
    let token = token.ok_or_else(|| auth_error(AuthError::Missing))?;
    check_policy_token(shared, &token, needed, &hosts, &info.segments, now_secs).map_err(auth_error)
}

fn check_policy_token(
    shared: &Shared,
    token: &SasToken,
    needed: Permission,
    hosts: &[String],
    segments: &[String],
    now_secs: i64,
) -> Result<(), AuthError> {
    let name = token.key_name.as_deref().ok_or_else(|| {
        AuthError::Denied(
            "service operations need a shared access policy token (skn=<policy>); device tokens are for the device endpoint".into(),
        )
    })?;
    let policy = shared
        .policies
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| AuthError::UnknownPolicy(name.to_string()))?;
    token.check_expiry(now_secs)?;
    if !token.signed_with(&policy.primary_key) && !token.signed_with(&policy.secondary_key) {
        return Err(AuthError::BadSignature);
    }
    if !token.covers(hosts, segments) {
        return Err(AuthError::WrongResource {
            resource: token.resource.clone(),
            path: format!("/{}", segments.join("/")),
            hosts: hosts.join(", "),
        });
    }
    if !policy.rights.has(needed) {
        return Err(AuthError::MissingPermission {
            policy: name.to_string(),
            needed: needed.name(),
        });
    }
    Ok(())
}

fn emulator_control(
    shared: &Shared,
    route: &Route,
    body: Result<Bytes, HubError>,
) -> Result<Reply, HubError> {
    let faults = |shared: &Shared| {
        json!({
            "faultRate": shared.fault_rate(),
            "throttleRate": shared.throttle_rate(),
            "latencyMs": shared.latency_ms.load(Ordering::Relaxed),
        })
    };
    match route {
        Route::EmulatorStats => Ok(Reply::ok(shared.stats_snapshot())),
        Route::EmulatorStatsReset => {
            shared.stats.reset();
            shared.throttle.reset();
            shared.meter.reset();
            Ok(Reply::no_content())
        }
        Route::EmulatorGetFaults => Ok(Reply::ok(faults(shared))),
        Route::EmulatorWrites => Ok(Reply::ok(shared.writes.snapshot())),
        Route::EmulatorSetFaults => {
            let bytes = body?;
            let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                HubError::bad_request(format!(
                    "send {{\"faultRate\": 0.1, \"throttleRate\": 0, \"latencyMs\": 0}}: {e}"
                ))
            })?;
            if let Some(rate) = value.get("faultRate").filter(|v| !v.is_null()) {
                let rate = rate
                    .as_f64()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| {
                        HubError::bad_request("faultRate must be a number from 0 to 1")
                    })?;
                shared.set_fault_rate(rate);
            }
            if let Some(rate) = value.get("throttleRate").filter(|v| !v.is_null()) {
                let rate = rate
                    .as_f64()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| {
                        HubError::bad_request("throttleRate must be a number from 0 to 1")
                    })?;
                shared.set_throttle_rate(rate);
            }
            if let Some(latency) = value.get("latencyMs").filter(|v| !v.is_null()) {
                let latency = latency.as_u64().ok_or_else(|| {
                    HubError::bad_request("latencyMs must be a non-negative integer")
                })?;
                shared.latency_ms.store(latency, Ordering::Relaxed);
            }
            Ok(Reply::ok(faults(shared)))
        }
        Route::EmulatorOutage => {
            let bytes = body?;
            let seconds = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("seconds")?.as_u64())
                .filter(|s| (1..=3600).contains(s))
                .ok_or_else(|| {
                    HubError::bad_request(
                        "send {\"seconds\": N} with N from 1 to 3600: how long the hub stays down",
                    )
                })?;
            if *shared.down.borrow() {
                return Err(HubError::new(
                    ErrorCode::InvalidOperation,
                    "an outage is already on",
                ));
            }
            shared.start_outage(std::time::Duration::from_secs(seconds));
            Ok(Reply::ok(json!({"downForSecs": seconds})))
        }
        _ => Err(HubError::new(
            ErrorCode::GenericNotFound,
            "not an emulator control route",
        )),
    }
}

fn json_response(status: u16, body: Option<&Value>) -> Response<Full<Bytes>> {
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if body.is_some() {
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    response
}

fn set_header(response: &mut Response<Full<Bytes>>, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// The HTTP response of a reply, and the size of its body.
fn reply_response(reply: Reply) -> (Response<Full<Bytes>>, usize) {
    let mut response = json_response(reply.status, reply.body.as_ref());
    let bytes = usize::try_from(hyper::body::Body::size_hint(response.body()).lower()).unwrap_or(0);
    if let Some(etag) = &reply.etag {
        set_header(&mut response, "etag", &format!("\"{etag}\""));
    }
    for (name, value) in &reply.headers {
        set_header(&mut response, name, value);
    }
    (response, bytes)
}

fn error_response(shared: &Shared, error: &HubError) -> Response<Full<Bytes>> {
    let now = shared.clock.now_millis();
    let body = error.body(
        &tracking_id(),
        &format_timestamp(now),
        &format_tracking_time(now),
    );
    let mut response = json_response(error.status(), Some(&body));
    set_header(&mut response, "iothub-errorcode", error.code.name());
    if let Some(wait) = error.retry_after_secs.filter(|_| shared.retry_after) {
        set_header(&mut response, "retry-after", &wait.to_string());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let q = parse_query_string(Some("api-version=2021-04-12&top=5&x=a%20b"));
        assert_eq!(q[0], ("api-version".into(), "2021-04-12".into()));
        assert_eq!(q[2].1, "a b");
        assert!(parse_query_string(None).is_empty());
    }

    #[test]
    fn stats_classes() {
        assert_eq!(stats_class(&Route::GetDevice("d".into())), "registry");
        assert_eq!(
            stats_class(&Route::DeviceSendEvent("d".into(), None)),
            "device"
        );
        assert_eq!(
            stats_class(&Route::GetConfiguration("c".into())),
            "configurations"
        );
    }
}
