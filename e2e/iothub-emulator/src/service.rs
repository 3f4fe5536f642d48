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
    pub(crate) strict: bool,
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
            });
            return error_response(shared, &error);
        }
    };
    if route.is_emulator_control() {
        let body = read_body(body).await;
        return match emulator_control(shared, &route, body) {
            Ok(reply) => reply_response(reply),
            Err(error) => error_response(shared, &error),
        };
    }
    let latency = shared.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    let has_if_match = info.headers.contains_key(hyper::header::IF_MATCH);
    let mut units = 0;
    let mut fault = false;
    let outcome = process(
        shared,
        &route,
        &info,
        body,
        client_thumbprints,
        &mut units,
        &mut fault,
    )
    .await;
    let response = match outcome {
        Ok(reply) => reply_response(reply),
        Err(error) => error_response(shared, &error),
    };
    shared.stats.record(Record {
        operation: route.name(has_if_match),
        class: stats_class(&route),
        is_write: route.is_write(),
        status: response.status().as_u16(),
        units,
        fault,
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

#[allow(clippy::too_many_arguments)]
async fn process(
    shared: &Shared,
    route: &Route,
    info: &RequestInfo,
    body: Incoming,
    client_thumbprints: &[String],
    units: &mut u64,
    fault: &mut bool,
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
    let rate = shared.fault_rate();
    if rate > 0.0 && rand::random::<f64>() < rate {
        *fault = true;
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
    let now = shared.clock.now_millis();
    if let Err(wait) = shared.throttle.try_acquire(class, cost, now) {
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
    if class != OperationClass::Unthrottled {
        *units = cost;
    }
    if let Route::DeviceSendEvent(device, module) = route {
        let sender = match module {
            Some(m) => format!("{device}/{m}"),
            None => device.clone(),
        };
        let reply = shared
            .hub()
            .device_send_event(device, module.as_deref(), now)?;
        shared.stats.record_telemetry(sender);
        return Ok(reply);
    }
    let if_match = IfMatch::parse(info.header("if-match"));
    let top = info.param("top").and_then(|t| t.parse::<i64>().ok());
    let mut hub = shared.hub();
    use Route::*;
    match route {
        ListDevices => Ok(hub.list_devices(top)),
        BulkRegistry => hub.bulk(&json_body, now),
        QueryTwins => hub.query(
            &json_body,
            info.header("x-ms-max-item-count"),
            info.header("x-ms-continuation"),
        ),
        PutDevice(id) => hub.put_device(id, &json_body, &if_match, now),
        GetDevice(id) => hub.get_device(id),
        DeleteDevice(id) => hub.delete_device(id, &if_match),
        ApplyConfigurationContent(id) => hub.apply_configuration_content(id, &json_body, now),
        ListModules(id) => hub.list_modules(id),
        PutModule(d, m) => hub.put_module(d, m, &json_body, &if_match, now),
        GetModule(d, m) => hub.get_module(d, m),
        DeleteModule(d, m) => hub.delete_module(d, m, &if_match),
        GetTwin(id) => hub.get_twin(id),
        UpdateTwin(id) => hub.write_device_twin(id, &json_body, &if_match, false, now),
        ReplaceTwin(id) => hub.write_device_twin(id, &json_body, &if_match, true, now),
        GetModuleTwin(d, m) => hub.get_module_twin(d, m),
        UpdateModuleTwin(d, m) => hub.write_module_twin(d, m, &json_body, &if_match, false, now),
        ReplaceModuleTwin(d, m) => hub.write_module_twin(d, m, &json_body, &if_match, true, now),
        ListConfigurations => Ok(hub.list_configurations(top)),
        TestQueries => hub.test_queries(&json_body),
        PutConfiguration(id) => hub.put_configuration(id, &json_body, &if_match, now),
        GetConfiguration(id) => hub.get_configuration(id),
        DeleteConfiguration(id) => hub.delete_configuration(id, &if_match, now),
        DeviceStatistics => Ok(hub.device_statistics()),
        ServiceStatistics => Ok(hub.service_statistics()),
        DeviceReadTwin(d, m) => hub.device_read_twin(d, m.as_deref()),
        DevicePatchReported(d, m) => hub.device_patch_reported(d, m.as_deref(), &json_body, now),
        DeviceSendEvent(..) | EmulatorStats | EmulatorStatsReset | EmulatorGetFaults
        | EmulatorSetFaults => unreachable!("handled before"),
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
    let faults = |shared: &Shared| json!({"faultRate": shared.fault_rate(), "latencyMs": shared.latency_ms.load(Ordering::Relaxed)});
    match route {
        Route::EmulatorStats => Ok(Reply::ok(shared.stats.snapshot())),
        Route::EmulatorStatsReset => {
            shared.stats.reset();
            shared.throttle.reset();
            Ok(Reply::no_content())
        }
        Route::EmulatorGetFaults => Ok(Reply::ok(faults(shared))),
        Route::EmulatorSetFaults => {
            let bytes = body?;
            let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                HubError::bad_request(format!(
                    "send {{\"faultRate\": 0.1, \"latencyMs\": 0}}: {e}"
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
            if let Some(latency) = value.get("latencyMs").filter(|v| !v.is_null()) {
                let latency = latency.as_u64().ok_or_else(|| {
                    HubError::bad_request("latencyMs must be a non-negative integer")
                })?;
                shared.latency_ms.store(latency, Ordering::Relaxed);
            }
            Ok(Reply::ok(faults(shared)))
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

fn reply_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = json_response(reply.status, reply.body.as_ref());
    if let Some(etag) = &reply.etag {
        set_header(&mut response, "etag", &format!("\"{etag}\""));
    }
    for (name, value) in &reply.headers {
        set_header(&mut response, name, value);
    }
    response
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
    if let Some(wait) = error.retry_after_secs {
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
