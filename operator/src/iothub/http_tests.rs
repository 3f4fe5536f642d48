//! HTTP behaviour of [`HubClient`] against a small scripted TLS server on 127.0.0.1 (its own
//! CA, trusted through the client's extra-CA option, exactly as the emulator's CA is).

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::*;
use crate::api::spec::HubSku;

/// A test key (base64 of 0x00..=0x1f); the assertions below look for it in error output.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: String,
    at: Instant,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("request body is JSON")
    }
}

struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// Sent instead of `body` when set (a body that streams).
    stream: Option<Body>,
    /// Never answer: the request is read and the connection kept open.
    hang: bool,
}

impl Default for Canned {
    fn default() -> Self {
        Canned {
            status: 200,
            headers: vec![],
            body: String::new(),
            stream: None,
            hang: false,
        }
    }
}

fn reply(status: u16, body: Value) -> Canned {
    Canned {
        status,
        headers: vec![],
        stream: None,
        hang: false,
        body: if body.is_null() {
            String::new()
        } else {
            body.to_string()
        },
    }
}

fn hub_error(status: u16, code: &str, text: &str) -> Canned {
    Canned {
        status,
        stream: None,
        hang: false,
        headers: vec![("iothub-errorcode", code.to_string())],
        body: json!({"Message": format!("ErrorCode:{code};{text}"),
                     "ExceptionMessage": "Tracking ID:t-G:1-TimeStamp:01/01/2024 00:00:00"})
        .to_string(),
    }
}

type Responder = Arc<dyn Fn(&Recorded, usize) -> Canned + Send + Sync>;

#[derive(Clone)]
struct ServerState {
    log: Arc<Mutex<Vec<Recorded>>>,
    responder: Responder,
}

struct TestHub {
    port: u16,
    ca_pem: String,
    log: Arc<Mutex<Vec<Recorded>>>,
    handle: axum_server::Handle<std::net::SocketAddr>,
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

impl TestHub {
    async fn start(
        responder: impl Fn(&Recorded, usize) -> Canned + Send + Sync + 'static,
    ) -> TestHub {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "iothub test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
            leaf.pem().into_bytes(),
            leaf_key.serialize_pem().into_bytes(),
        )
        .await
        .unwrap();

        let log = Arc::new(Mutex::new(Vec::new()));
        let state = ServerState {
            log: log.clone(),
            responder: Arc::new(responder),
        };
        let app = Router::new().fallback(handle).with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, tls)
            .unwrap()
            .handle(handle.clone());
        tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        TestHub {
            port,
            ca_pem: ca.pem(),
            log,
            handle,
        }
    }

    fn connection_string(&self) -> ConnectionString {
        ConnectionString::parse(&format!(
            "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}",
            self.port
        ))
        .unwrap()
    }

    fn client(&self, options: ClientOptions) -> HubClient {
        HubClient::new(
            self.connection_string(),
            Some(self.ca_pem.as_bytes()),
            Arc::new(HubRateLimiter::new(generous_limits())),
            options,
        )
        .unwrap()
    }

    fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }
}

async fn handle(State(state): State<ServerState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, usize::MAX).await.unwrap();
    let recorded = Recorded {
        method: parts.method.to_string(),
        // HTTP/2 requests carry an absolute URI; keep the path and query as the hub sees them.
        uri: parts
            .uri
            .path_and_query()
            .map(|pq| pq.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    };
    let index = {
        let mut log = state.log.lock().unwrap();
        log.push(recorded.clone());
        log.len() - 1
    };
    let canned = (state.responder)(&recorded, index);
    if canned.hang {
        std::future::pending::<()>().await;
    }
    let body = canned.stream.unwrap_or_else(|| Body::from(canned.body));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(canned.status).unwrap();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    for (name, value) in canned.headers {
        response.headers_mut().insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    response
}

/// Limits high enough that the limiter never delays these tests.
fn generous_limits() -> RateLimits {
    RateLimits {
        sku: HubSku::S3.into(),
        units: 1,
        registry_operations_per_minute: Some(10_000_000),
        queries_per_minute: Some(10_000_000),
        configurations_per_minute: Some(10_000_000),
        twin_operations_per_minute: Some(10_000_000),
    }
}

/// Fast retries so the tests do not sleep for long.
fn fast_options() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(5),
            throttle_base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(5),
        },
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

fn device_json(id: &str) -> Value {
    json!({"deviceId": id, "generationId": "638000000000000001", "etag": "MQ==",
           "status": "enabled", "connectionState": "Disconnected",
           "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "cHJpbWFyeQ==", "secondaryKey": "c2Vjb25kYXJ5"}},
           "capabilities": {"iotEdge": true},
           "deviceScope": format!("ms-azure-iot-edge://{id}-638000000000000001")})
}

#[tokio::test]
async fn get_device_sends_a_signed_encoded_request_and_reads_the_device() {
    let hub = TestHub::start(|req, _| {
        assert_eq!(req.method, "GET");
        reply(200, device_json("edge#1?%$"))
    })
    .await;
    let client = hub.client(fast_options());
    let device = client.get_device("edge#1?%$").await.unwrap();
    assert_eq!(device.device_id.as_deref(), Some("edge#1?%$"));
    assert_eq!(device.capabilities.unwrap().iot_edge, Some(true));

    let requests = hub.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        request.uri,
        "/devices/edge%231%3F%25%24?api-version=2021-04-12"
    );
    assert_eq!(request.header("accept"), Some("application/json"));
    let authorization = request.header("authorization").unwrap();
    let expected_prefix = format!("SharedAccessSignature sr=localhost%3A{}&sig=", hub.port);
    assert!(
        authorization.starts_with(&expected_prefix),
        "{authorization}"
    );
    assert!(authorization.ends_with("&skn=iothubowner"));
    let se: u64 = authorization
        .split('&')
        .find_map(|p| p.strip_prefix("se="))
        .unwrap()
        .parse()
        .unwrap();
    let now = jiff::Timestamp::now().as_second() as u64;
    assert!(
        se > now + 3000 && se <= now + 3600,
        "token lives about an hour: {se} vs {now}"
    );
    assert_eq!(client.counters().count_status(200), 1);
}

#[tokio::test]
async fn throttled_call_waits_for_retry_after_then_succeeds() {
    let hub = TestHub::start(|_, n| {
        if n == 0 {
            let mut canned = hub_error(429, "ThrottlingException", "IotHub throttled");
            canned.headers.push(("retry-after", "1".into()));
            canned
        } else {
            reply(200, device_json("d1"))
        }
    })
    .await;
    let client = hub.client(fast_options());
    client.get_device("d1").await.unwrap();
    let requests = hub.requests();
    assert_eq!(requests.len(), 2);
    // Honoured means the retry did not go out before Retry-After elapsed (a lower bound that
    // the client guarantees, not a performance measurement).
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert_eq!(client.counters().count_status(429), 1);
    assert_eq!(client.counters().count_status(200), 1);
}

#[tokio::test]
async fn server_errors_are_retried_and_client_errors_are_not() {
    let hub = TestHub::start(|req, n| {
        if req.uri.starts_with("/devices/flaky") && n < 2 {
            hub_error(503, "ServiceUnavailable", "try later")
        } else if req.uri.starts_with("/devices/flaky") {
            reply(200, device_json("flaky"))
        } else {
            hub_error(400, "ArgumentInvalid", "bad id")
        }
    })
    .await;
    let client = hub.client(fast_options());
    client.get_device("flaky").await.unwrap();
    assert_eq!(hub.requests().len(), 3);

    let err = client.get_device("bad").await.unwrap_err();
    assert_eq!(hub.requests().len(), 4, "400 is not retried");
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.code(), Some("ArgumentInvalid"));
    assert_eq!(err.device_id(), Some("bad"));
    assert!(!err.is_transient());
    assert!(err.to_string().contains("bad id"), "{err}");
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_max_attempts() {
    let hub = TestHub::start(|_, _| hub_error(503, "ServerBusy", "busy")).await;
    let client = hub.client(fast_options());
    let err = client.delete_device("d1", None).await.unwrap_err();
    assert_eq!(hub.requests().len(), 4);
    assert_eq!(err.status(), Some(503));
    assert!(err.is_transient());
    assert_eq!(client.counters().count_status(503), 4);
}

#[tokio::test]
async fn query_follows_continuation_until_it_is_absent() {
    let hub = TestHub::start(|req, n| {
        let pages = [
            (json!([{"deviceId": "a"}, {"deviceId": "b"}]), Some("tok-1")),
            (json!([{"deviceId": "c"}]), Some("tok/2+=")),
            (json!([{"deviceId": "d"}]), None),
        ];
        let expected_continuation = [None, Some("tok-1"), Some("tok/2+=")][n];
        assert_eq!(req.header("x-ms-continuation"), expected_continuation);
        let (body, next) = pages[n].clone();
        let mut canned = reply(200, body);
        canned.headers.push(("x-ms-item-type", "twin".into()));
        if let Some(next) = next {
            canned.headers.push(("x-ms-continuation", next.into()));
        }
        canned
    })
    .await;
    let client = hub.client(ClientOptions {
        query_page_size: 2,
        ..fast_options()
    });
    let twins = client
        .query_twins("SELECT * FROM devices WHERE tags.edgeHierarchy.name = 'h'")
        .await
        .unwrap();
    let ids: Vec<_> = twins.iter().map(|t| t.device_id.clone().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    let requests = hub.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.uri, "/devices/query?api-version=2021-04-12");
        assert_eq!(request.header("x-ms-max-item-count"), Some("2"));
        assert_eq!(
            request.json(),
            json!({"query": "SELECT * FROM devices WHERE tags.edgeHierarchy.name = 'h'"})
        );
    }
}

#[tokio::test]
async fn a_repeated_continuation_token_stops_the_query() {
    let hub = TestHub::start(|_, _| {
        let mut canned = reply(200, json!([]));
        canned.headers.push(("x-ms-continuation", "same".into()));
        canned
    })
    .await;
    let err = hub
        .client(fast_options())
        .query("SELECT * FROM devices")
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::InvalidResponse { .. }), "{err}");
    assert_eq!(hub.requests().len(), 2);
}

fn entries(count: usize) -> Vec<ExportImportDevice> {
    (0..count)
        .map(|i| ExportImportDevice {
            id: Some(format!("dev-{i:03}")),
            import_mode: Some(ImportMode::Create),
            status: Some(DeviceStatus::Enabled),
            authentication: Some(AuthenticationMechanism::sas_generated()),
            capabilities: Some(DeviceCapabilities {
                iot_edge: Some(true),
            }),
            tags: Some(
                json!({"edgeHierarchy": {"name": "h"}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            ..Default::default()
        })
        .collect()
}

#[tokio::test]
async fn bulk_is_chunked_at_100_with_per_device_results() {
    let hub = TestHub::start(|req, _| {
        let body = req.json();
        let ids: Vec<String> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        if ids.contains(&"dev-150".to_string()) {
            reply(
                400,
                json!({"isSuccessful": false,
                       "errors": [{"deviceId": "dev-150", "errorCode": "DeviceAlreadyExists",
                                   "errorStatus": "already registered"}],
                       "warnings": []}),
            )
        } else {
            reply(
                200,
                json!({"isSuccessful": true, "errors": [], "warnings": []}),
            )
        }
    })
    .await;
    let client = hub.client(fast_options());
    let outcome = client.bulk_devices(&entries(250)).await.unwrap();
    let sizes: Vec<usize> = hub
        .requests()
        .iter()
        .map(|r| r.json().as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(outcome.calls, 3);
    assert_eq!(outcome.results.len(), 250);
    assert_eq!(outcome.results[249].device_id, "dev-249");
    let failures: Vec<_> = outcome.failures().collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].device_id, "dev-150");
    match &failures[0].outcome {
        BulkDeviceOutcome::Failed(error) => {
            assert_eq!(error.error_code.as_deref(), Some("DeviceAlreadyExists"))
        }
        other => panic!("unexpected {other:?}"),
    }
    // The entries carry only swagger fields, tags included.
    let first = &hub.requests()[0].json()[0];
    assert_eq!(
        first,
        &json!({"id": "dev-000", "importMode": "create", "status": "enabled",
                "authentication": {"symmetricKey": {"primaryKey": "", "secondaryKey": ""}, "type": "sas"},
                "capabilities": {"iotEdge": true}, "tags": {"edgeHierarchy": {"name": "h"}}})
    );
}

#[tokio::test]
async fn a_failed_bulk_call_marks_its_chunk_and_skips_the_rest() {
    let hub = TestHub::start(|_, n| {
        if n == 0 {
            reply(
                200,
                json!({"isSuccessful": true, "errors": [], "warnings": []}),
            )
        } else {
            hub_error(401, "IotHubUnauthorizedAccess", "Unauthorized")
        }
    })
    .await;
    let client = hub.client(fast_options());
    let outcome = client.bulk_devices(&entries(230)).await.unwrap();
    assert_eq!(hub.requests().len(), 2);
    assert_eq!(outcome.calls, 2);
    assert!(matches!(
        outcome.results[0].outcome,
        BulkDeviceOutcome::Succeeded { .. }
    ));
    assert!(matches!(
        outcome.results[100].outcome,
        BulkDeviceOutcome::RequestFailed(_)
    ));
    assert!(matches!(
        outcome.results[229].outcome,
        BulkDeviceOutcome::NotSent
    ));
    assert!(outcome.request_error().unwrap().is_unauthorized());
}

#[tokio::test]
async fn bulk_refuses_duplicate_or_missing_ids_without_calling_the_hub() {
    let hub = TestHub::start(|_, _| reply(200, json!({"isSuccessful": true}))).await;
    let client = hub.client(fast_options());
    let mut twice = entries(3);
    twice[2].id = Some("dev-000".into());
    let err = client.bulk_devices(&twice).await.unwrap_err();
    assert_eq!(err.device_id(), Some("dev-000"));
    let mut missing = entries(2);
    missing[1].id = None;
    assert!(matches!(
        client.bulk_devices(&missing).await.unwrap_err(),
        HubError::InvalidRequest { .. }
    ));
    assert!(hub.requests().is_empty());
}

#[tokio::test]
async fn conditional_writes_quote_etags_and_paths_encode_module_ids() {
    let hub = TestHub::start(|req, _| match req.method.as_str() {
        "DELETE" => reply(204, Value::Null),
        "POST" => reply(204, Value::Null),
        _ => {
            let mut canned = reply(200, json!({"deviceId": "e1", "version": 3}));
            canned.headers.push(("etag", "\"AAAAAAAAAAM=\"".into()));
            canned
        }
    })
    .await;
    let client = hub.client(fast_options());
    let patch = Twin {
        tags: Some(
            json!({"edgeHierarchy": {"layer": 2}})
                .as_object()
                .unwrap()
                .clone(),
        ),
        ..Default::default()
    };
    let twin = client
        .update_twin("e1", &patch, Some("AAAAAAAAAAI="))
        .await
        .unwrap();
    assert_eq!(
        twin.etag.as_deref(),
        Some("AAAAAAAAAAM="),
        "etag taken from the header"
    );
    client.delete_device("e1", None).await.unwrap();
    client
        .delete_configuration("cfg", Some("MQ=="))
        .await
        .unwrap();
    client.get_module_twin("e1", "$edgeAgent").await.unwrap();
    let content = ConfigurationContent {
        modules_content: Some(
            [(
                "$edgeAgent".to_string(),
                json!({"properties.desired": {"schemaVersion": "1.1"}})
                    .as_object()
                    .unwrap()
                    .clone(),
            )]
            .into(),
        ),
        ..Default::default()
    };
    client
        .apply_configuration_content("e1", &content)
        .await
        .unwrap();

    let requests = hub.requests();
    assert_eq!(requests[0].method, "PATCH");
    assert_eq!(requests[0].header("if-match"), Some("\"AAAAAAAAAAI=\""));
    assert_eq!(
        requests[0].header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        requests[0].json(),
        json!({"tags": {"edgeHierarchy": {"layer": 2}}})
    );
    assert_eq!(requests[1].header("if-match"), Some("\"*\""));
    assert_eq!(
        requests[2].uri,
        "/configurations/cfg?api-version=2021-04-12"
    );
    assert_eq!(requests[2].header("if-match"), Some("\"MQ==\""));
    assert_eq!(
        requests[3].uri,
        "/twins/e1/modules/%24edgeAgent?api-version=2021-04-12"
    );
    assert_eq!(
        requests[4].uri,
        "/devices/e1/applyConfigurationContent?api-version=2021-04-12"
    );
    assert_eq!(
        requests[4].json(),
        json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1"}}}})
    );
}

#[tokio::test]
async fn create_without_etag_sends_no_if_match_and_conflict_is_classified() {
    let hub = TestHub::start(|_, _| hub_error(409, "DeviceAlreadyExists", "exists")).await;
    let client = hub.client(fast_options());
    let device = Device {
        device_id: Some("e1".into()),
        capabilities: Some(DeviceCapabilities {
            iot_edge: Some(true),
        }),
        ..Default::default()
    };
    let err = client
        .create_or_update_device(&device, None)
        .await
        .unwrap_err();
    assert!(err.is_conflict());
    let requests = hub.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "PUT");
    assert_eq!(requests[0].header("if-match"), None);
    assert_eq!(
        requests[0].json(),
        json!({"deviceId": "e1", "capabilities": {"iotEdge": true}})
    );

    let nameless = Device::default();
    assert!(matches!(
        client
            .create_or_update_device(&nameless, None)
            .await
            .unwrap_err(),
        HubError::InvalidRequest { .. }
    ));
    assert_eq!(
        hub.requests().len(),
        1,
        "nothing sent for a device without an id"
    );
}

#[tokio::test]
async fn secrets_never_appear_in_errors_even_when_the_server_echoes_them() {
    // A hostile or buggy server echoing the Authorization header into its error message.
    let hub = TestHub::start(|req, _| {
        let echoed = req.header("authorization").unwrap_or("").to_string();
        hub_error(
            401,
            "IotHubUnauthorizedAccess",
            &format!("rejected token {echoed}"),
        )
    })
    .await;
    let client = hub.client(fast_options());
    let err = client.get_device("d1").await.unwrap_err();
    assert!(err.is_unauthorized());
    let authorization = hub.requests()[0]
        .header("authorization")
        .unwrap()
        .to_string();
    let sig = authorization
        .split('&')
        .find_map(|p| p.strip_prefix("sig="))
        .unwrap()
        .to_string();
    let shown = format!("{err} {err:?} {client:?}");
    for secret in [KEY, &sig, &authorization] {
        assert!(!shown.contains(secret), "secret leaked in: {shown}");
    }
    assert!(shown.contains("<redacted>"), "{shown}");

    // Transport errors (nothing listening) carry the URL but no header.
    let port = hub.port;
    drop(hub);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let closed = HubClient::new(
        ConnectionString::parse(&format!(
            "HostName=127.0.0.1:{port};SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
        ))
        .unwrap(),
        None,
        Arc::new(HubRateLimiter::new(generous_limits())),
        ClientOptions {
            retry: RetryPolicy {
                max_attempts: 2,
                ..fast_options().retry
            },
            ..fast_options()
        },
    )
    .unwrap();
    let err = closed.get_device("d1").await.unwrap_err();
    assert!(matches!(err, HubError::Transport { .. }), "{err}");
    assert!(err.is_transient());
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("SharedAccessSignature") && !shown.contains(KEY),
        "{shown}"
    );
    assert_eq!(
        closed.counters().count_operation(HubOperation::GetDevice),
        2
    );
}

#[tokio::test]
async fn the_extra_ca_is_needed_and_bad_pem_is_refused() {
    let hub = TestHub::start(|_, _| reply(200, device_json("d1"))).await;
    let limiter = Arc::new(HubRateLimiter::new(generous_limits()));
    let untrusting = HubClient::new(
        hub.connection_string(),
        None,
        limiter.clone(),
        ClientOptions {
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            ..fast_options()
        },
    )
    .unwrap();
    let err = untrusting.get_device("d1").await.unwrap_err();
    assert!(matches!(err, HubError::Transport { .. }), "{err}");
    assert!(hub.requests().is_empty());

    let bad = HubClient::new(
        hub.connection_string(),
        Some(b"not a certificate"),
        limiter,
        ClientOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(bad, HubError::Setup { .. }), "{bad}");
    assert!(bad.to_string().contains("PEM"), "{bad}");
}

#[tokio::test]
async fn configurations_round_trip() {
    let hub = TestHub::start(|req, _| match (req.method.as_str(), req.uri.as_str()) {
        ("GET", uri) if uri.starts_with("/configurations?") => reply(
            200,
            json!([{"id": "a", "priority": 1}, {"id": "b", "priority": 2}]),
        ),
        ("PUT", _) => {
            let mut body = req.json();
            body["etag"] = json!("MQ==");
            reply(201, body)
        }
        _ => hub_error(404, "ConfigurationNotFound", "no such configuration"),
    })
    .await;
    let client = hub.client(fast_options());
    let list = client.list_configurations(Some(20)).await.unwrap();
    assert_eq!(list.len(), 2);
    let created = client
        .create_or_update_configuration(
            &Configuration {
                id: Some("base-1".into()),
                priority: Some(10),
                target_condition: Some("tags.edgeHierarchy.name='h'".into()),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(created.etag.as_deref(), Some("MQ=="));
    let missing = client.get_configuration("nope").await.unwrap_err();
    assert!(missing.is_not_found());
    assert_eq!(missing.code(), Some("ConfigurationNotFound"));
    let requests = hub.requests();
    assert_eq!(
        requests[0].uri,
        "/configurations?api-version=2021-04-12&top=20"
    );
    assert_eq!(
        requests[1].json(),
        json!({"id": "base-1", "targetCondition": "tags.edgeHierarchy.name='h'", "priority": 10})
    );
}

// ----- what one hub can cost the others ---------------------------------------------------

/// A body that never ends: `[` then 1 MiB chunks of JSON-ish filler, counting what it produced.
fn endless_body(produced: Arc<std::sync::atomic::AtomicUsize>) -> Body {
    let chunk = axum::body::Bytes::from(vec![b' '; 1024 * 1024]);
    let head = futures::stream::once(async {
        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"["))
    });
    let rest = futures::stream::repeat_with(move || {
        produced.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
        Ok::<_, std::io::Error>(chunk.clone())
    });
    Body::from_stream(futures::StreamExt::chain(head, rest))
}

#[tokio::test]
async fn an_endless_body_is_cut_at_the_cap_with_an_error_naming_the_hub_and_call() {
    let produced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = produced.clone();
    let hub = TestHub::start(move |_, _| Canned {
        stream: Some(endless_body(counter.clone())),
        ..Canned::default()
    })
    .await;
    let client = hub.client(fast_options());
    let err = client.query("SELECT * FROM devices").await.unwrap_err();
    assert!(matches!(err, HubError::TooLarge { .. }), "{err}");
    let shown = err.to_string();
    assert!(
        shown.contains(&format!("localhost:{}", hub.port)),
        "{shown}"
    );
    assert!(
        shown.contains("query") && shown.contains("64 MiB"),
        "{shown}"
    );
    assert!(!err.is_transient(), "the same server sends the same again");
    assert_eq!(hub.requests().len(), 1, "not retried");
    // The server kept producing only as long as the client read (plus what the sockets buffer).
    let sent = produced.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "the server produced {} MiB before the client stopped reading",
        sent >> 20
    );
    assert!(sent < 2 * MAX_LIST_BODY_BYTES, "{sent} bytes produced");
}

#[tokio::test]
async fn a_single_object_larger_than_its_cap_is_refused() {
    let big = format!(
        "{{\"deviceId\": \"d1\", \"x\": \"{}\"}}",
        "a".repeat(MAX_OBJECT_BODY_BYTES)
    );
    let hub = TestHub::start(move |_, _| Canned {
        body: big.clone(),
        ..Canned::default()
    })
    .await;
    let err = hub
        .client(fast_options())
        .get_device("d1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::TooLarge { limit_bytes, .. } if limit_bytes == MAX_OBJECT_BODY_BYTES),
        "{err}"
    );
    assert!(
        err.to_string().contains("get_device of device 'd1'"),
        "{err}"
    );
}

#[tokio::test]
async fn pages_together_are_held_to_the_list_cap() {
    // Pages of 20 MiB each, each under the cap alone, each with a new token.
    let page = format!("[\"{}\"]", "p".repeat(20 * 1024 * 1024));
    let hub = TestHub::start(move |_, n| {
        let mut canned = Canned {
            body: page.clone(),
            ..Canned::default()
        };
        canned
            .headers
            .push(("x-ms-continuation", format!("tok-{n}")));
        canned
    })
    .await;
    let err = hub
        .client(fast_options())
        .query("SELECT * FROM devices")
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::TooLarge { limit_bytes, .. } if limit_bytes == MAX_LIST_BODY_BYTES),
        "{err}"
    );
    assert_eq!(
        hub.requests().len(),
        4,
        "three pages fit 64 MiB, the fourth does not"
    );
}

#[tokio::test]
async fn alternating_continuation_tokens_stop_the_query() {
    let hub = TestHub::start(|_, n| {
        let mut canned = reply(200, json!([{"deviceId": format!("d{n}")}]));
        let token = if n % 2 == 0 { "A" } else { "B" };
        canned.headers.push(("x-ms-continuation", token.into()));
        canned
    })
    .await;
    let err = hub
        .client(fast_options())
        .query("SELECT * FROM devices")
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::InvalidResponse { .. }), "{err}");
    assert!(err.to_string().contains("already given"), "{err}");
    // A, B, then A again: the third answer repeats the first token.
    assert_eq!(hub.requests().len(), 3);
    let sent: Vec<Option<String>> = hub
        .requests()
        .iter()
        .map(|r| r.header("x-ms-continuation").map(str::to_string))
        .collect();
    assert_eq!(sent, [None, Some("A".into()), Some("B".into())]);
}

#[tokio::test]
async fn endless_fresh_continuation_tokens_stop_at_the_page_cap() {
    let hub = TestHub::start(|_, n| {
        let mut canned = reply(200, json!([]));
        canned
            .headers
            .push(("x-ms-continuation", format!("page-{n}")));
        canned
    })
    .await;
    let err = hub
        .client(fast_options())
        .query("SELECT * FROM devices")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("after 100 pages"), "{err}");
    assert_eq!(hub.requests().len(), MAX_QUERY_PAGES);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let hub = TestHub::start(|req, _| {
        if req.uri.starts_with("/elsewhere") {
            return reply(200, device_json("d1"));
        }
        Canned {
            status: 302,
            headers: vec![("location", "/elsewhere/devices/d1".into())],
            ..Canned::default()
        }
    })
    .await;
    let err = hub
        .client(fast_options())
        .get_device("d1")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(302), "{err}");
    assert!(err.to_string().contains("redirect"), "{err}");
    assert!(!err.is_transient());
    let requests = hub.requests();
    assert_eq!(
        requests.len(),
        1,
        "{:?}",
        requests.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    // The redirect's target never saw the request (nor its SAS token).
    assert!(requests[0].uri.starts_with("/devices/d1"));
}

fn hang_options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_millis(400),
        call_budget: Duration::from_secs(1),
        ..fast_options()
    }
}

#[tokio::test]
async fn a_hub_that_never_answers_costs_one_budget_then_fails_at_once() {
    let hub = TestHub::start(|_, _| Canned {
        hang: true,
        ..Canned::default()
    })
    .await;
    let client = hub.client(hang_options());
    let started = Instant::now();
    let err = client.get_device("d1").await.unwrap_err();
    eprintln!("the first call ended after {:?}", started.elapsed());
    let HubError::DeadlineExceeded { attempts, .. } = &err else {
        panic!("{err}");
    };
    // 400 ms attempts with short backoffs fit the 1 s budget two or three times.
    assert!((2..=3).contains(attempts), "{err}");
    assert!(err.is_transient());
    assert!(
        err.to_string().contains(&format!("localhost:{}", hub.port)),
        "{err}"
    );
    let sent = hub.requests().len();
    assert_eq!(sent, *attempts as usize);

    // The hub is paused: the next calls fail without a request, until it answers again.
    let err = client.get_device("d2").await.unwrap_err();
    assert!(matches!(err, HubError::Paused { .. }), "{err}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("fail at once"), "{err}");
    assert_eq!(hub.requests().len(), sent, "nothing sent while paused");
}

#[tokio::test]
async fn a_hung_hub_gets_at_most_its_in_flight_cap_of_requests() {
    let hub = TestHub::start(|_, _| Canned {
        hang: true,
        ..Canned::default()
    })
    .await;
    let holding = hub.client(ClientOptions {
        request_timeout: Duration::from_secs(30),
        call_budget: Duration::from_secs(3),
        ..fast_options()
    });
    let first = (0..MAX_IN_FLIGHT_PER_HUB).map(|i| {
        let client = holding.clone();
        tokio::spawn(async move { client.get_device(&format!("d{i}")).await })
    });
    let first: Vec<_> = first.collect();
    while hub.requests().len() < MAX_IN_FLIGHT_PER_HUB {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // More calls on the same hub (same share) while every slot is held: they wait for a slot
    // within their own budget and end without a request.
    let waiting = hub
        .client(ClientOptions {
            call_budget: Duration::from_millis(300),
            ..fast_options()
        })
        .with_share(holding.share().clone());
    for i in 0..8 {
        let err = waiting.get_device(&format!("w{i}")).await.unwrap_err();
        assert!(err.to_string().contains("in-flight slots"), "{err}");
    }
    assert_eq!(hub.requests().len(), MAX_IN_FLIGHT_PER_HUB);
    for call in first {
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, HubError::DeadlineExceeded { .. }), "{err}");
    }
}

#[tokio::test]
async fn throttling_with_a_long_retry_after_ends_within_the_budget() {
    let hub = TestHub::start(|_, _| {
        let mut canned = hub_error(429, "ThrottlingException", "throttled");
        canned.headers.push(("retry-after", "3".into()));
        canned
    })
    .await;
    let err = hub
        .client(ClientOptions {
            call_budget: Duration::from_secs(1),
            ..fast_options()
        })
        .get_device("d1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::DeadlineExceeded { attempts: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("429"), "{err}");
    assert_eq!(
        hub.requests().len(),
        1,
        "a wait past the budget is not started"
    );
}

#[tokio::test]
async fn hierarchies_on_one_hub_share_its_budget_and_each_keeps_its_own() {
    let hub = TestHub::start(|_, _| reply(200, device_json("d1"))).await;
    let limiters = HubLimiters::new();
    let host = format!("localhost:{}", hub.port);
    let ttl = Duration::from_secs(600);
    let base = hub.client(fast_options());
    let a = base.with_share(limiters.join(&host, "ns/a", &generous_limits(), ttl));
    let b = base.with_share(limiters.join(
        &host,
        "ns/b",
        &RateLimits {
            registry_operations_per_minute: Some(1),
            ..generous_limits()
        },
        ttl,
    ));
    assert!(Arc::ptr_eq(a.limiter(), b.limiter()), "one hub budget");
    assert_eq!(a.sharing_key(), b.sharing_key(), "one set of connections");
    // b's one registry call a minute holds back only b: a's calls go on.
    b.get_device("d1").await.unwrap();
    for _ in 0..5 {
        a.get_device("d1").await.unwrap();
    }
    let late = tokio::time::timeout(Duration::from_millis(300), b.get_device("d1")).await;
    assert!(late.is_err(), "b's second call waits for its own budget");
    assert_eq!(hub.requests().len(), 6);
}
