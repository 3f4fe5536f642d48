//! HTTP behaviour of the emulator, started in-process on a free port and called over real TLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Answer, TestHub, client_for};
use iothub_emulator::auth::{build_token, encode_resource, generate_key};
use iothub_emulator::clock::{Clock, ManualClock, SystemClock};
use iothub_emulator::{EmulatorOptions, Sku};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn auth_failures_get_azures_status_and_code() {
    let hub = TestHub::lenient().await;
    let host = encode_resource(hub.emulator.host_name());
    let owner_key = hub
        .emulator
        .policy("iothubowner")
        .unwrap()
        .primary_key
        .clone();
    let now = hub.now_secs();
    let get = |auth: Option<String>| hub.call_with(Method::GET, "/devices/x", None, auth, &[]);

    // Wrong key.
    let wrong = build_token(&host, &generate_key(), Some("iothubowner"), now + 3600);
    get(Some(wrong))
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    // Expired beyond the five minutes of skew; within the skew it still works.
    let expired = build_token(&host, &owner_key, Some("iothubowner"), now - 301);
    get(Some(expired))
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    let in_skew = build_token(&host, &owner_key, Some("iothubowner"), now - 200);
    get(Some(in_skew)).await.assert_error(404, "DeviceNotFound");
    // Tampered sr: signed for one resource, presented with another.
    let signed = build_token("localhost%3A1", &owner_key, Some("iothubowner"), now + 3600);
    let tampered = signed.replace("sr=localhost%3A1", &format!("sr={host}"));
    get(Some(tampered))
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    // A valid token for another hub.
    let other_hub = build_token(
        "other.azure-devices.net",
        &owner_key,
        Some("iothubowner"),
        now + 3600,
    );
    get(Some(other_hub))
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    // Missing permission: registryRead cannot write, serviceConnect cannot read the registry.
    let create = hub
        .call_with(
            Method::PUT,
            "/devices/x",
            Some(json!({"deviceId": "x"})),
            Some(hub.token("registryRead")),
            &[],
        )
        .await;
    create.assert_error(401, "IotHubUnauthorizedAccess");
    assert!(
        create.body["Message"]
            .as_str()
            .unwrap()
            .contains("RegistryWrite")
    );
    get(Some(hub.token("serviceConnect")))
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    get(Some(hub.token("registryRead")))
        .await
        .assert_error(404, "DeviceNotFound");
    // Unknown policy, no header, garbage header.
    let unknown = build_token(&host, &owner_key, Some("nobody"), now + 3600);
    get(Some(unknown))
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    get(None)
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    get(Some("Bearer x".into()))
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    // api-version: unknown and missing get the service's 400; the three known ones work.
    for bad in [
        "/devices/x?api-version=2019-01-01",
        "/devices/x?api-version=",
    ] {
        hub.call(Method::GET, bad, None)
            .await
            .assert_error(400, "InvalidProtocolVersion");
    }
    for good in ["2020-03-13", "2021-04-12", "2024-03-31"] {
        hub.call(Method::GET, &format!("/devices/x?api-version={good}"), None)
            .await
            .assert_error(404, "DeviceNotFound");
    }
    // A secret never appears in an error.
    let answer = get(None).await;
    assert!(!answer.body.to_string().contains(&owner_key));
}

#[tokio::test]
async fn device_lifecycle_with_etags() {
    let hub = TestHub::lenient().await;
    let created = hub.create_device("d1", json!({})).await;
    assert_eq!(created.status, 200, "create answers 200, not 201");
    let etag = created.body["etag"].as_str().unwrap().to_string();
    assert_eq!(created.header("etag"), Some(format!("\"{etag}\"").as_str()));
    assert_eq!(
        created.body["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .len(),
        44
    );
    assert_eq!(created.body["capabilities"]["iotEdge"], false);
    assert!(created.body.get("deviceScope").is_none());
    hub.create_device("d1", json!({}))
        .await
        .assert_error(409, "DeviceAlreadyExists");

    async fn update(hub: &TestHub, if_match: &str, status: &str) -> Answer {
        let body = json!({"deviceId": "d1", "status": status});
        let auth = Some(hub.token("iothubowner"));
        hub.call_with(
            Method::PUT,
            "/devices/d1",
            Some(body),
            auth,
            &[("If-Match", if_match)],
        )
        .await
    }
    update(&hub, "\"Zm9v\"", "disabled")
        .await
        .assert_error(412, "PreconditionFailed");
    let quoted = format!("\"{etag}\"");
    let updated = update(&hub, &quoted, "disabled").await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["status"], "disabled");
    assert_ne!(updated.body["etag"], etag.as_str());
    assert_eq!(
        updated.body["authentication"]["symmetricKey"]["primaryKey"],
        created.body["authentication"]["symmetricKey"]["primaryKey"],
        "an update without keys keeps them"
    );
    // The old etag is stale now; "*" always matches.
    update(&hub, &quoted, "enabled")
        .await
        .assert_error(412, "PreconditionFailed");
    assert_eq!(update(&hub, "*", "enabled").await.status, 200);
    assert_eq!(update(&hub, "\"*\"", "enabled").await.status, 200);

    hub.call(Method::GET, "/devices/nope", None)
        .await
        .assert_error(404, "DeviceNotFound");
    let missing = hub
        .call_with(
            Method::PUT,
            "/devices/nope",
            Some(json!({"deviceId": "nope"})),
            Some(hub.token("iothubowner")),
            &[("If-Match", "*")],
        )
        .await;
    missing.assert_error(404, "DeviceNotFound");
    let wrong_delete = hub
        .call_with(
            Method::DELETE,
            "/devices/d1",
            None,
            Some(hub.token("iothubowner")),
            &[("If-Match", "\"Zm9v\"")],
        )
        .await;
    wrong_delete.assert_error(412, "PreconditionFailed");
    assert_eq!(
        hub.call(Method::DELETE, "/devices/d1", None).await.status,
        204
    );
    hub.call(Method::GET, "/devices/d1", None)
        .await
        .assert_error(404, "DeviceNotFound");
    hub.create_device("bad id", json!({}))
        .await
        .assert_error(400, "ArgumentInvalid");
}

#[tokio::test]
async fn edge_devices_scopes_and_system_modules() {
    let hub = TestHub::lenient().await;
    let edge = hub.create_edge("edge1", None).await.body;
    let generation = edge["generationId"].as_str().unwrap();
    assert_eq!(generation.len(), 18);
    let scope = format!("ms-azure-iot-edge://edge1-{generation}");
    assert_eq!(edge["deviceScope"], scope.as_str());

    let modules = hub
        .call(Method::GET, "/devices/edge1/modules", None)
        .await
        .body;
    let ids: Vec<&str> = modules
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["moduleId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["$edgeAgent", "$edgeHub"]);
    let agent = hub
        .call(Method::GET, "/devices/edge1/modules/%24edgeAgent", None)
        .await;
    assert_eq!(agent.status, 200);
    assert_eq!(agent.body["deviceId"], "edge1");
    let twin = hub
        .call(Method::GET, "/twins/edge1/modules/%24edgeHub", None)
        .await;
    assert_eq!(twin.body["moduleId"], "$edgeHub");
    assert_eq!(twin.body["properties"]["desired"]["$version"], 1);
    hub.call(Method::GET, "/devices/edge1/modules/nope", None)
        .await
        .assert_error(404, "ModuleNotFound");

    // Nested edge child by parentScopes keeps its own scope.
    let child = hub.create_edge("edge2", Some(&scope)).await.body;
    assert_eq!(child["parentScopes"], json!([scope]));
    assert!(
        child["deviceScope"]
            .as_str()
            .unwrap()
            .starts_with("ms-azure-iot-edge://edge2-")
    );
    // A leaf's deviceScope is copied into its parentScopes.
    let leaf = hub
        .create_device("leaf1", json!({"deviceScope": scope}))
        .await
        .body;
    assert_eq!(leaf["deviceScope"], scope.as_str());
    assert_eq!(leaf["parentScopes"], json!([scope]));
    // Removing the parent of a leaf: deviceScope "".
    let etag = format!("\"{}\"", leaf["etag"].as_str().unwrap());
    let detached = hub
        .call_with(
            Method::PUT,
            "/devices/leaf1",
            Some(json!({"deviceId": "leaf1", "deviceScope": ""})),
            Some(hub.token("iothubowner")),
            &[("If-Match", &etag)],
        )
        .await
        .body;
    assert_eq!(detached["parentScopes"], json!([]));
    // Twins carry scopes for queries.
    let twin = hub.call(Method::GET, "/twins/edge2", None).await.body;
    assert_eq!(twin["parentScopes"], json!([scope]));
    assert_eq!(twin["capabilities"]["iotEdge"], true);
}

#[tokio::test]
async fn twins_patch_replace_and_etags() {
    let hub = TestHub::lenient().await;
    hub.create_device("t1", json!({})).await;
    let twin = hub.call(Method::GET, "/twins/t1", None).await;
    let etag = format!("\"{}\"", twin.body["etag"].as_str().unwrap());
    let patch = json!({"tags": {"env": "prod", "site": {"line": 1}}, "properties": {"desired": {"interval": 5}}});
    let patched = hub
        .call_with(
            Method::PATCH,
            "/twins/t1",
            Some(patch),
            Some(hub.token("iothubowner")),
            &[("If-Match", &etag)],
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["tags"]["site"]["line"], 1);
    assert_eq!(patched.body["properties"]["desired"]["interval"], 5);
    assert_eq!(patched.body["properties"]["desired"]["$version"], 2);
    assert_eq!(patched.body["version"], 2);
    // Stale etag -> 412; null removes a tag.
    let stale = hub
        .call_with(
            Method::PATCH,
            "/twins/t1",
            Some(json!({"tags": {"env": null}})),
            Some(hub.token("iothubowner")),
            &[("If-Match", &etag)],
        )
        .await;
    stale.assert_error(412, "PreconditionFailed");
    let removed = hub
        .call(
            Method::PATCH,
            "/twins/t1",
            Some(json!({"tags": {"env": null}})),
        )
        .await;
    assert!(removed.body["tags"].get("env").is_none());
    // PUT replaces tags and desired.
    let replaced = hub
        .call(
            Method::PUT,
            "/twins/t1",
            Some(json!({"tags": {"only": true}, "properties": {"desired": {}}})),
        )
        .await;
    assert_eq!(replaced.body["tags"], json!({"only": true}));
    assert!(
        replaced.body["properties"]["desired"]
            .get("interval")
            .is_none()
    );
    // Invalid keys are refused.
    hub.call(
        Method::PATCH,
        "/twins/t1",
        Some(json!({"tags": {"a.b": 1}})),
    )
    .await
    .assert_error(400, "ArgumentInvalid");
    hub.call(Method::GET, "/twins/none", None)
        .await
        .assert_error(404, "DeviceNotFound");
}

#[tokio::test]
async fn bulk_registry_partial_failure() {
    let hub = TestHub::lenient().await;
    hub.create_device("b1", json!({})).await;
    let body = json!([
        {"id": "b1", "importMode": "create"},
        {"id": "b2", "importMode": "create", "capabilities": {"iotEdge": true}},
        {"id": "b3", "importMode": "create", "tags": {"group": "g1"}, "authentication": {"type": "sas"}},
        {"id": "b4", "importMode": "update"},
        {"id": "b1", "importMode": "bogus"}
    ]);
    hub.call(Method::POST, "/devices", Some(body))
        .await
        .assert_error(400, "DeviceDefinedMultipleTimes");
    let body = json!([
        {"id": "b1", "importMode": "create"},
        {"id": "b2", "importMode": "create", "capabilities": {"iotEdge": true}},
        {"id": "b3", "importMode": "create", "tags": {"group": "g1"}},
        {"id": "b4", "importMode": "update"}
    ]);
    let result = hub.call(Method::POST, "/devices", Some(body)).await;
    assert_eq!(result.status, 400);
    assert_eq!(result.body["isSuccessful"], false);
    let errors = result.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["deviceId"], "b1");
    assert_eq!(errors[0]["errorCode"], "DeviceAlreadyExists");
    assert_eq!(errors[0]["operation"], "create");
    assert_eq!(errors[1]["deviceId"], "b4");
    assert_eq!(errors[1]["errorCode"], "DeviceNotFound");
    // The valid items were applied.
    let b2 = hub.call(Method::GET, "/devices/b2", None).await.body;
    assert!(
        b2["deviceScope"]
            .as_str()
            .unwrap()
            .starts_with("ms-azure-iot-edge://b2-")
    );
    assert_eq!(
        hub.call(Method::GET, "/devices/b2/modules", None)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        hub.call(Method::GET, "/twins/b3", None).await.body["tags"]["group"],
        "g1"
    );
    // All good -> 200.
    let ok = hub
        .call(
            Method::POST,
            "/devices",
            Some(
                json!([{"id": "b5", "importMode": "create"}, {"id": "b3", "importMode": "delete"}]),
            ),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.body,
        json!({"isSuccessful": true, "errors": [], "warnings": []})
    );
    hub.call(Method::GET, "/devices/b3", None)
        .await
        .assert_error(404, "DeviceNotFound");
    let too_many: Vec<Value> = (0..101)
        .map(|i| json!({"id": format!("x{i}"), "importMode": "create"}))
        .collect();
    hub.call(Method::POST, "/devices", Some(Value::Array(too_many)))
        .await
        .assert_error(400, "ArgumentInvalid");
    // Etag-checked modes.
    let stale = hub
        .call(
            Method::POST,
            "/devices",
            Some(json!([{"id": "b5", "importMode": "updateIfMatchETag", "eTag": "\"Zm9v\""}])),
        )
        .await;
    assert_eq!(stale.body["errors"][0]["errorCode"], "EtagDoesNotMatch");
}

#[tokio::test]
async fn query_paging_and_errors() {
    let hub = TestHub::lenient().await;
    let items: Vec<Value> = (0..25)
        .map(|i| json!({"id": format!("q{i:02}"), "importMode": "create", "tags": {"batch": if i % 2 == 0 { "even" } else { "odd" }}}))
        .collect();
    assert_eq!(
        hub.call(Method::POST, "/devices", Some(Value::Array(items)))
            .await
            .status,
        200
    );
    let mut continuation: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    loop {
        let mut headers = vec![("x-ms-max-item-count", "10")];
        if let Some(token) = &continuation {
            headers.push(("x-ms-continuation", token.as_str()));
        }
        let page = hub
            .call_with(
                Method::POST,
                "/devices/query",
                Some(json!({"query": "SELECT * FROM devices"})),
                Some(hub.token("iothubowner")),
                &headers,
            )
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(page.header("x-ms-item-type"), Some("twin"));
        let rows = page.body.as_array().unwrap();
        pages.push(rows.len());
        seen.extend(
            rows.iter()
                .map(|r| r["deviceId"].as_str().unwrap().to_string()),
        );
        continuation = page.header("x-ms-continuation").map(str::to_string);
        if continuation.is_none() {
            break;
        }
    }
    assert_eq!(pages, [10, 10, 5]);
    seen.dedup();
    assert_eq!(seen.len(), 25);
    let projected = hub
        .call(
            Method::POST,
            "/devices/query",
            Some(json!({"query": "SELECT deviceId FROM devices WHERE tags.batch = 'even'"})),
        )
        .await;
    assert_eq!(projected.header("x-ms-item-type"), Some("raw"));
    assert_eq!(projected.body.as_array().unwrap().len(), 13);
    assert!(projected.header("x-ms-continuation").is_none());
    let bad = hub
        .call(
            Method::POST,
            "/devices/query",
            Some(json!({"query": "SELECT * FROM devices GROUP BY tags.batch"})),
        )
        .await;
    bad.assert_error(400, "ArgumentInvalid");
    assert!(
        bad.body["Message"]
            .as_str()
            .unwrap()
            .contains("at character")
    );
    let bad_token = hub
        .call_with(
            Method::POST,
            "/devices/query",
            Some(json!({"query": "SELECT * FROM devices"})),
            Some(hub.token("iothubowner")),
            &[("x-ms-continuation", "nonsense")],
        )
        .await;
    bad_token.assert_error(400, "ArgumentInvalid");
}

#[tokio::test]
async fn s1_one_unit_throttles_the_101st_registry_operation() {
    let clock = ManualClock::starting_now();
    let injected: Arc<dyn Clock> = clock.clone();
    let hub = TestHub::start(|o| {
        o.quotas = Some((Sku::S1, 1));
        o.clock = injected;
    })
    .await;
    for i in 0..100 {
        assert_eq!(
            hub.create_device(&format!("s{i}"), json!({})).await.status,
            200,
            "operation {i}"
        );
    }
    let throttled = hub.call(Method::GET, "/devices/s0", None).await;
    throttled.assert_error(429, "ThrottlingException");
    let retry_after: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Other classes are counted separately.
    assert_eq!(hub.call(Method::GET, "/twins/s0", None).await.status, 200);
    // A bulk call counts per device.
    clock.advance(Duration::from_secs(60));
    let bulk: Vec<Value> = (0..60)
        .map(|i| json!({"id": format!("n{i}"), "importMode": "create"}))
        .collect();
    assert_eq!(
        hub.call(Method::POST, "/devices", Some(Value::Array(bulk.clone())))
            .await
            .status,
        200
    );
    let second: Vec<Value> = (60..120)
        .map(|i| json!({"id": format!("n{i}"), "importMode": "create"}))
        .collect();
    hub.call(Method::POST, "/devices", Some(Value::Array(second)))
        .await
        .assert_error(429, "ThrottlingException");
    let stats = hub.emulator.stats();
    assert_eq!(stats["throttled"], 2);
    assert_eq!(stats["registryOperations"], 100 + 60);
}

fn standard_deployment(target: &str, priority: i64) -> Value {
    json!({
        "id": "ignored-by-test",
        "priority": priority,
        "targetCondition": target,
        "content": {"modulesContent": {
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "runtime": {"type": "docker"},
                "systemModules": {}, "modules": {"base": {"settings": {"image": "base:1"}}}}},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {"up": "FROM /messages/* INTO $upstream"}}}
        }}
    })
}

fn layered_deployment(target: &str, priority: i64) -> Value {
    json!({
        "priority": priority,
        "targetCondition": target,
        "labels": {"kind": "layer"},
        "content": {"modulesContent": {
            "$edgeAgent": {"properties.desired.modules.sensor": {"settings": {"image": "sensor:2"}}},
            "$edgeHub": {"properties.desired.routes.sensor": "FROM /messages/modules/sensor/* INTO $upstream"},
            "sensor": {"properties.desired": {"interval": 5}}
        }}
    })
}

#[tokio::test]
async fn configurations_priority_layering_and_metrics() {
    let hub = TestHub::lenient().await;
    hub.create_edge("gw1", None).await;
    hub.create_edge("gw2", None).await;
    hub.call(
        Method::PATCH,
        "/twins/gw1",
        Some(json!({"tags": {"env": "prod"}})),
    )
    .await;
    let mut base = standard_deployment("tags.env = 'prod'", 10);
    base["id"] = json!("base");
    let created = hub
        .call(Method::PUT, "/configurations/base", Some(base.clone()))
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(created.body["etag"], "MQ==");
    hub.call(Method::PUT, "/configurations/base", Some(base.clone()))
        .await
        .assert_error(409, "ConfigurationAlreadyExists");
    let layer = hub
        .call(
            Method::PUT,
            "/configurations/layer",
            Some(layered_deployment("tags.env = 'prod'", 20)),
        )
        .await;
    assert_eq!(layer.status, 200, "{}", layer.body);

    let agent = hub
        .call(Method::GET, "/twins/gw1/modules/%24edgeAgent", None)
        .await
        .body;
    let modules = &agent["properties"]["desired"]["modules"];
    assert_eq!(modules["base"]["settings"]["image"], "base:1");
    assert_eq!(modules["sensor"]["settings"]["image"], "sensor:2");
    assert_eq!(
        agent["configurations"],
        json!({"base": {"status": "Applied"}, "layer": {"status": "Applied"}})
    );
    let edge_hub = hub
        .call(Method::GET, "/twins/gw1/modules/%24edgeHub", None)
        .await
        .body;
    assert_eq!(
        edge_hub["properties"]["desired"]["routes"]["sensor"],
        "FROM /messages/modules/sensor/* INTO $upstream"
    );
    let device_twin = hub.call(Method::GET, "/twins/gw1", None).await.body;
    assert_eq!(device_twin["configurations"]["base"]["status"], "Applied");
    // gw2 is not targeted.
    let other = hub
        .call(Method::GET, "/twins/gw2/modules/%24edgeAgent", None)
        .await
        .body;
    assert!(other["properties"]["desired"].get("modules").is_none());

    // A higher-priority standard deployment wins; the old one is only Targeted.
    let mut better = standard_deployment("tags.env = 'prod'", 15);
    better["id"] = json!("better");
    better["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"] =
        json!({"better": {}});
    assert_eq!(
        hub.call(Method::PUT, "/configurations/better", Some(better))
            .await
            .status,
        200
    );
    let agent = hub
        .call(Method::GET, "/twins/gw1/modules/%24edgeAgent", None)
        .await
        .body;
    assert_eq!(agent["configurations"]["base"]["status"], "Targeted");
    assert_eq!(agent["configurations"]["better"]["status"], "Applied");
    assert!(
        agent["properties"]["desired"]["modules"]
            .get("base")
            .is_none()
    );
    assert_eq!(
        agent["properties"]["desired"]["modules"]["sensor"]["settings"]["image"],
        "sensor:2"
    );

    // Content is immutable; priority and target condition are not.
    let etag = format!(
        "\"{}\"",
        hub.call(Method::GET, "/configurations/base", None)
            .await
            .body["etag"]
            .as_str()
            .unwrap()
    );
    let mut changed = base.clone();
    changed["content"]["modulesContent"]["$edgeHub"]["properties.desired"]["routes"] = json!({});
    hub.call_with(
        Method::PUT,
        "/configurations/base",
        Some(changed),
        Some(hub.token("iothubowner")),
        &[("If-Match", &etag)],
    )
    .await
    .assert_error(400, "CannotModifyImmutableConfigurationContent");
    let mut raised = base.clone();
    raised["priority"] = json!(30);
    let updated = hub
        .call_with(
            Method::PUT,
            "/configurations/base",
            Some(raised),
            Some(hub.token("iothubowner")),
            &[("If-Match", &etag)],
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["etag"], "Mg==");
    assert_eq!(updated.body["systemMetrics"]["results"]["appliedCount"], 1);
    assert_eq!(updated.body["systemMetrics"]["results"]["targetedCount"], 1);

    // Health: $edgeAgent reports through the device endpoint.
    let version = hub
        .call(Method::GET, "/twins/gw1/modules/%24edgeAgent", None)
        .await
        .body["properties"]["desired"]["$version"]
        .clone();
    let device_key = hub.call(Method::GET, "/devices/gw1", None).await.body["authentication"]["symmetricKey"]["primaryKey"].as_str().unwrap().to_string();
    let token = build_token(
        &encode_resource(&format!("{}/devices/gw1", hub.emulator.host_name())),
        &device_key,
        None,
        hub.now_secs() + 600,
    );
    let report = json!({"lastDesiredVersion": version, "lastDesiredStatus": {"code": 200, "description": ""}});
    let reported = hub
        .call_with(
            Method::PATCH,
            "/devices/gw1/modules/%24edgeAgent/twin/reported",
            Some(report),
            Some(token),
            &[],
        )
        .await;
    assert_eq!(reported.status, 204, "{}", reported.body);
    let metrics = hub
        .call(Method::GET, "/configurations/base", None)
        .await
        .body["systemMetrics"]["results"]
        .clone();
    assert_eq!(
        metrics,
        json!({"targetedCount": 1, "appliedCount": 1, "reportedSuccessfulCount": 1, "reportedFailedCount": 0})
    );

    // Per-device deployments do not mix with automatic ones.
    let content = json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1"}}, "$edgeHub": {"properties.desired": {"schemaVersion": "1.1"}}}});
    hub.call(
        Method::POST,
        "/devices/gw1/applyConfigurationContent",
        Some(content.clone()),
    )
    .await
    .assert_error(400, "InvalidOperation");
    let applied = hub
        .call(
            Method::POST,
            "/devices/gw2/applyConfigurationContent",
            Some(content),
        )
        .await;
    assert_eq!(applied.status, 204, "{}", applied.body);
    let agent2 = hub
        .call(Method::GET, "/twins/gw2/modules/%24edgeAgent", None)
        .await
        .body;
    assert_eq!(agent2["properties"]["desired"]["schemaVersion"], "1.1");
    hub.call(
        Method::POST,
        "/devices/gw2/applyConfigurationContent",
        Some(json!({"deviceContent": {"properties.desired.x": 1}})),
    )
    .await
    .assert_error(400, "InvalidConfigurationContent");

    // Invalid target condition; list; delete; test queries.
    let mut bad = standard_deployment("tags.env = ", 1);
    bad["id"] = json!("bad");
    hub.call(Method::PUT, "/configurations/bad", Some(bad))
        .await
        .assert_error(400, "InvalidConfigurationTargetCondition");
    let list = hub.call(Method::GET, "/configurations", None).await.body;
    assert_eq!(list.as_array().unwrap().len(), 3);
    let tested = hub
        .call(Method::POST, "/configurations/testQueries", Some(json!({"targetCondition": "tags.x = ", "customMetricQueries": {"ok": "SELECT deviceId FROM devices"}})))
        .await
        .body;
    assert!(!tested["targetConditionError"].as_str().unwrap().is_empty());
    assert_eq!(tested["customMetricQueryErrors"], json!({}));
    assert_eq!(
        hub.call(Method::DELETE, "/configurations/layer", None)
            .await
            .status,
        204
    );
    hub.call(Method::GET, "/configurations/layer", None)
        .await
        .assert_error(404, "ConfigurationNotFound");
    let agent = hub
        .call(Method::GET, "/twins/gw1/modules/%24edgeAgent", None)
        .await
        .body;
    assert!(agent["configurations"].get("layer").is_none());
}

#[tokio::test]
async fn strict_mode_enforces_parent_rules() {
    let hub = TestHub::strict().await;
    let leaf = hub.create_device("leaf", json!({})).await;
    assert_eq!(leaf.status, 200);
    // Non-edge "parent": its would-be scope names no edge device.
    let fake_scope = "ms-azure-iot-edge://leaf-637000000000000000";
    hub.create_device("child", json!({"deviceScope": fake_scope}))
        .await
        .assert_error(400, "InvalidDeviceScope");
    // Two parents.
    let a = hub.create_edge("pa", None).await.body["deviceScope"]
        .as_str()
        .unwrap()
        .to_string();
    let b = hub.create_edge("pb", None).await.body["deviceScope"]
        .as_str()
        .unwrap()
        .to_string();
    hub.create_device(
        "two",
        json!({"capabilities": {"iotEdge": true}, "parentScopes": [a, b]}),
    )
    .await
    .assert_error(400, "InvalidDeviceScope");
    // Five generations below the top, not six.
    let mut scope = a.clone();
    for generation in 1..=5 {
        scope = hub
            .create_edge(&format!("g{generation}"), Some(&scope))
            .await
            .body["deviceScope"]
            .as_str()
            .unwrap()
            .to_string();
    }
    let sixth = hub.create_device("g6", json!({"deviceScope": scope})).await;
    sixth.assert_error(400, "InvalidDeviceScope");
    assert!(
        sixth.body["Message"]
            .as_str()
            .unwrap()
            .contains("generation 6")
    );
    // 100 children, not 101 (bulk counts each item against the rule).
    let children: Vec<Value> = (0..100)
        .map(|i| json!({"id": format!("c{i}"), "importMode": "create", "deviceScope": b}))
        .collect();
    assert_eq!(
        hub.call(Method::POST, "/devices", Some(Value::Array(children)))
            .await
            .status,
        200
    );
    hub.create_device("c100", json!({"deviceScope": b}))
        .await
        .assert_error(400, "InvalidDeviceScope");
    // Bodies off the swagger model.
    let unknown = hub.create_device("u1", json!({"parentScope": a})).await;
    unknown.assert_error(400, "ArgumentInvalid");
    assert!(
        unknown.body["Message"]
            .as_str()
            .unwrap()
            .contains("$.parentScope")
    );
    hub.create_device("u2", json!({"capabilities": {"iotEdge": "yes"}}))
        .await
        .assert_error(400, "ArgumentInvalid");
}

#[tokio::test]
async fn lenient_mode_accepts_what_azure_accepts() {
    let hub = TestHub::lenient().await;
    let a = hub.create_edge("pa", None).await.body["deviceScope"]
        .as_str()
        .unwrap()
        .to_string();
    let b = hub.create_edge("pb", None).await.body["deviceScope"]
        .as_str()
        .unwrap()
        .to_string();
    let two = hub
        .create_device(
            "two",
            json!({"capabilities": {"iotEdge": true}, "parentScopes": [a, b]}),
        )
        .await;
    assert_eq!(two.status, 200, "{}", two.body);
    let arbitrary = hub
        .create_device("s1", json!({"deviceScope": "someScope"}))
        .await;
    assert_eq!(arbitrary.body["parentScopes"], json!(["someScope"]));
    let unknown_field = hub.create_device("u1", json!({"parentScope": "x"})).await;
    assert_eq!(unknown_field.status, 200);
}

#[tokio::test]
async fn device_endpoint_with_sas_and_x509() {
    let hub = TestHub::lenient().await;
    let edge = hub.create_edge("e1", None).await.body;
    let key = edge["authentication"]["symmetricKey"]["secondaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let host = hub.emulator.host_name().to_string();
    let device_token = |device: &str, key: &str| {
        build_token(
            &encode_resource(&format!("{host}/devices/{device}")),
            key,
            None,
            hub.now_secs() + 600,
        )
    };
    let patch = json!({"lastDesiredStatus": {"code": 200}});
    let path = "/devices/e1/modules/%24edgeAgent/twin/reported";
    let ok = hub
        .call_with(
            Method::PATCH,
            path,
            Some(patch.clone()),
            Some(device_token("e1", &key)),
            &[],
        )
        .await;
    assert_eq!(ok.status, 204, "{}", ok.body);
    assert_eq!(ok.header("x-ms-reported-version"), Some("2"));
    let twin = hub
        .call(Method::GET, "/twins/e1/modules/%24edgeAgent", None)
        .await
        .body;
    assert_eq!(
        twin["properties"]["reported"]["lastDesiredStatus"]["code"],
        200
    );
    // Reads desired as a device would.
    let read = hub
        .call_with(
            Method::GET,
            "/devices/e1/modules/%24edgeAgent/twin",
            None,
            Some(device_token("e1", &key)),
            &[],
        )
        .await;
    assert_eq!(read.body["desired"]["$version"], 1);
    assert_eq!(read.body["reported"]["$version"], 2);
    // Wrong key, another device's token, a service token without DeviceConnect.
    hub.call_with(
        Method::PATCH,
        path,
        Some(patch.clone()),
        Some(device_token("e1", &generate_key())),
        &[],
    )
    .await
    .assert_error(401, "IotHubUnauthorizedAccess");
    hub.create_edge("e2", None).await;
    let other_key = hub.call(Method::GET, "/devices/e2", None).await.body["authentication"]["symmetricKey"]["primaryKey"].as_str().unwrap().to_string();
    hub.call_with(
        Method::PATCH,
        path,
        Some(patch.clone()),
        Some(device_token("e2", &other_key)),
        &[],
    )
    .await
    .assert_error(401, "IotHubUnauthorizedAccess");
    hub.call_with(
        Method::PATCH,
        path,
        Some(patch.clone()),
        Some(hub.token("serviceConnect")),
        &[],
    )
    .await
    .assert_error(401, "IotHubUnauthorizedAccess");
    assert_eq!(
        hub.call_with(
            Method::PATCH,
            path,
            Some(patch),
            Some(hub.token("device")),
            &[]
        )
        .await
        .status,
        204
    );
    // Telemetry is counted per sender.
    for _ in 0..3 {
        let sent = hub
            .call_with(
                Method::POST,
                "/devices/e1/messages/events",
                Some(json!({"t": 21.5})),
                Some(device_token("e1", &key)),
                &[],
            )
            .await;
        assert_eq!(sent.status, 204);
    }
    let stats = hub
        .call_with(Method::GET, "/_emulator/stats", None, None, &[])
        .await
        .body;
    assert_eq!(stats["telemetry"]["bySender"]["e1"], 3);

    // X.509: a self-signed identity certificate registered by SHA-256 thumbprint.
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["x1".to_string()]).unwrap();
    let cert = params.self_signed(&key_pair).unwrap();
    let [sha256, _] = iothub_emulator::pki::thumbprints(cert.der());
    let registered = hub
        .create_device("x1", json!({"authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": sha256.to_lowercase()}}}))
        .await;
    assert_eq!(registered.status, 200, "{}", registered.body);
    assert_eq!(registered.body["authentication"]["type"], "selfSigned");
    let pem = format!("{}{}", cert.pem(), key_pair.serialize_pem());
    let identity = reqwest::Identity::from_pem(pem.as_bytes()).unwrap();
    let mtls = client_for(&hub.emulator, Some(identity));
    let url = format!(
        "{}/devices/x1/twin/reported?api-version=2021-04-12",
        hub.emulator.base_url()
    );
    let answer = mtls
        .patch(&url)
        .json(&json!({"fw": "1.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 204);
    let wrong = mtls
        .patch(format!(
            "{}/devices/e1/twin/reported?api-version=2021-04-12",
            hub.emulator.base_url()
        ))
        .json(&json!({"fw": "1.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        wrong.status().as_u16(),
        401,
        "a certificate of x1 does not authenticate e1"
    );
    assert_eq!(
        hub.call(Method::GET, "/twins/x1", None).await.body["properties"]["reported"]["fw"],
        "1.0"
    );
}

#[tokio::test]
async fn stats_faults_and_files() {
    let hub = TestHub::lenient().await;
    hub.create_device("s1", json!({})).await;
    hub.create_device("s1", json!({})).await;
    hub.call(Method::GET, "/devices/s1", None).await;
    hub.call(Method::PATCH, "/twins/s1", Some(json!({"tags": {"a": 1}})))
        .await;
    let stats = hub
        .call_with(Method::GET, "/_emulator/stats", None, None, &[])
        .await
        .body;
    assert_eq!(
        stats["operations"]["devices.create"],
        json!({"200": 1, "409": 1})
    );
    assert_eq!(stats["operations"]["devices.get"]["200"], 1);
    assert_eq!(stats["classes"]["registry"]["writes"], 2);
    assert_eq!(stats["writeCalls"], 3);
    assert_eq!(stats["total"], 4);
    assert_eq!(
        hub.call_with(Method::POST, "/_emulator/stats/reset", None, None, &[])
            .await
            .status,
        204
    );
    assert_eq!(hub.emulator.stats()["total"], 0);

    let set = hub
        .call_with(
            Method::PUT,
            "/_emulator/faults",
            Some(json!({"faultRate": 1.0})),
            None,
            &[],
        )
        .await;
    assert_eq!(set.body["faultRate"], 1.0);
    for _ in 0..5 {
        let answer = hub.call(Method::GET, "/devices/s1", None).await;
        assert!(
            answer.status == 500 || answer.status == 503,
            "{}",
            answer.status
        );
        let code = answer.header("iothub-errorcode").unwrap();
        assert!(code == "ServerError" || code == "ServiceUnavailable");
    }
    assert_eq!(hub.emulator.stats()["faultsInjected"], 5);
    hub.emulator.set_fault_rate(0.0);
    assert_eq!(hub.call(Method::GET, "/devices/s1", None).await.status, 200);

    // Files: the owner connection string, all policies, the CA and the port.
    let dir = hub.emulator.dir();
    let owner = std::fs::read_to_string(dir.join("connection-string")).unwrap();
    assert_eq!(
        owner,
        hub.emulator.connection_string("iothubowner").unwrap()
    );
    assert!(owner.starts_with(&format!(
        "HostName=localhost:{};SharedAccessKeyName=iothubowner;",
        hub.emulator.port()
    )));
    let all: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("connection-strings.json")).unwrap(),
    )
    .unwrap();
    for policy in [
        "iothubowner",
        "registryRead",
        "registryReadWrite",
        "serviceConnect",
        "device",
    ] {
        assert!(
            all[policy]["connectionString"]
                .as_str()
                .unwrap()
                .contains(policy),
            "{policy}"
        );
    }
    assert_eq!(
        all["registryReadWrite"]["rights"],
        json!(["RegistryRead", "RegistryWrite"])
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("port")).unwrap(),
        hub.emulator.port().to_string()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        hub.emulator.ca_pem()
    );
    // Unknown paths and methods.
    hub.call(Method::GET, "/nothing/here", None)
        .await
        .assert_error(404, "GenericNotFound");
    hub.call(Method::PATCH, "/devices/s1", None)
        .await
        .assert_error(405, "GenericMethodNotAllowed");
}

#[tokio::test]
async fn system_clock_is_the_default() {
    let options = EmulatorOptions::new("/nonexistent");
    let skew = (options.clock.now_millis() - SystemClock.now_millis()).abs();
    assert!(skew < 60_000);
}

#[tokio::test]
async fn injected_429s_carry_no_retry_after() {
    let hub = TestHub::lenient().await;
    hub.create_device("t1", json!({})).await;
    let set = hub
        .call_with(
            Method::PUT,
            "/_emulator/faults",
            Some(json!({"throttleRate": 1.0})),
            None,
            &[],
        )
        .await;
    assert_eq!(set.body["throttleRate"], 1.0);
    assert_eq!(set.body["faultRate"], 0.0);
    for _ in 0..3 {
        let answer = hub.call(Method::GET, "/devices/t1", None).await;
        answer.assert_error(429, "ThrottlingException");
        assert_eq!(answer.header("retry-after"), None);
    }
    assert_eq!(hub.emulator.stats()["throttled"], 3);
    let bad = hub
        .call_with(
            Method::PUT,
            "/_emulator/faults",
            Some(json!({"throttleRate": 2})),
            None,
            &[],
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    hub.call_with(
        Method::PUT,
        "/_emulator/faults",
        Some(json!({"throttleRate": 0})),
        None,
        &[],
    )
    .await;
    assert_eq!(hub.call(Method::GET, "/devices/t1", None).await.status, 200);
}

#[tokio::test]
async fn an_outage_refuses_connections_and_keeps_the_state() {
    let hub = TestHub::lenient().await;
    assert_eq!(hub.create_device("o1", json!({})).await.status, 200);
    let before = hub.call(Method::GET, "/devices/o1", None).await.body;
    let refused = hub
        .call_with(
            Method::PUT,
            "/_emulator/outage",
            Some(json!({"seconds": 0})),
            None,
            &[],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let set = hub
        .call_with(
            Method::PUT,
            "/_emulator/outage",
            Some(json!({"seconds": 2})),
            None,
            &[],
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.body["downForSecs"], 2);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let url = format!(
        "{}/devices/o1?api-version=2021-04-12",
        hub.emulator.base_url()
    );
    // A new client: no pooled connection to reuse.
    let fresh = common::client_for(&hub.emulator, None);
    let down = fresh
        .get(&url)
        .header("Authorization", hub.token("iothubowner"))
        .send()
        .await;
    let error = down.expect_err("the hub is down");
    assert!(error.is_connect() || error.is_request(), "{error:?}");
    // Back after the outage on the same port, with the device as it was.
    let mut back = None;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Ok(answer) = fresh
            .get(&url)
            .header("Authorization", hub.token("iothubowner"))
            .send()
            .await
        {
            back = Some(answer.json::<Value>().await.unwrap());
            break;
        }
    }
    let back = back.expect("the hub came back within 10 s");
    assert_eq!(back["generationId"], before["generationId"]);
    assert_eq!(back["etag"], before["etag"]);
}
