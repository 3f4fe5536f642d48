//! The realism knobs over HTTP: query lag, scheduled configuration evaluation, label and
//! literal rules, query length, twin keys, message metering, traffic shaping, limits and the
//! injected bulk warning. Time is a manual clock wherever a behaviour depends on it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Answer, TestHub};
use iothub_emulator::clock::{Clock, ManualClock};
use iothub_emulator::{EmulatorOptions, RegisteredWithoutTwin, Sku};
use reqwest::Method;
use serde_json::{Value, json};

/// A hub on a manual clock, configured by `configure`.
async fn manual_hub(configure: impl FnOnce(&mut EmulatorOptions)) -> (TestHub, Arc<ManualClock>) {
    let clock = ManualClock::starting_now();
    let injected: Arc<dyn Clock> = clock.clone();
    let hub = TestHub::start(|o| {
        o.clock = injected;
        configure(o);
    })
    .await;
    (hub, clock)
}

async fn query(hub: &TestHub, sql: &str) -> Answer {
    hub.call(
        Method::POST,
        "/devices/query",
        Some(json!({ "query": sql })),
    )
    .await
}

/// The `deviceId`s of a successful query answer.
async fn query_ids(hub: &TestHub, sql: &str) -> Vec<String> {
    let answer = query(hub, sql).await;
    assert_eq!(answer.status, 200, "{sql}: {}", answer.body);
    answer
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["deviceId"].as_str().unwrap().to_string())
        .collect()
}

fn standard_deployment(target: &str) -> Value {
    json!({
        "priority": 10,
        "targetCondition": target,
        "content": {"modulesContent": {
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "runtime": {"type": "docker"},
                "systemModules": {}, "modules": {"base": {"settings": {"image": "base:1"}}}}},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {"up": "FROM /messages/* INTO $upstream"}}}
        }}
    })
}

fn layered_deployment(target: &str) -> Value {
    json!({
        "priority": 20,
        "targetCondition": target,
        "content": {"modulesContent": {
            "$edgeAgent": {"properties.desired.modules.sensor": {"settings": {"image": "sensor:2"}}}
        }}
    })
}

/// A standard deployment with `count` custom modules.
fn deployment_with_modules(count: usize) -> Value {
    let modules: serde_json::Map<String, Value> = (0..count)
        .map(|i| (format!("m{i}"), json!({"settings": {"image": "x:1"}})))
        .collect();
    let mut deployment = standard_deployment("*");
    deployment["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"] =
        Value::Object(modules);
    deployment
}

async fn tag(hub: &TestHub, id: &str, tags: Value) {
    let answer = hub
        .call(
            Method::PATCH,
            &format!("/twins/{id}"),
            Some(json!({ "tags": tags })),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn twin_queries_see_writes_only_after_the_lag() {
    let (hub, clock) = manual_hub(|o| o.realism.query_lag_ms = 2_000).await;
    hub.create_edge("lag1", None).await;
    // GET sees the new device at once, queries do not.
    assert_eq!(hub.call(Method::GET, "/twins/lag1", None).await.status, 200);
    assert!(query_ids(&hub, "SELECT * FROM devices").await.is_empty());
    assert!(
        query_ids(&hub, "SELECT * FROM devices.modules")
            .await
            .is_empty()
    );
    clock.advance(Duration::from_millis(1_999));
    assert!(query_ids(&hub, "SELECT * FROM devices").await.is_empty());
    clock.advance(Duration::from_millis(1));
    assert_eq!(query_ids(&hub, "SELECT * FROM devices").await, ["lag1"]);
    assert_eq!(
        query_ids(&hub, "SELECT * FROM devices.modules").await.len(),
        2
    );

    // A tag patch.
    tag(&hub, "lag1", json!({"env": "prod"})).await;
    let twin = hub.call(Method::GET, "/twins/lag1", None).await;
    assert_eq!(twin.body["tags"]["env"], "prod");
    let prod = "SELECT * FROM devices WHERE tags.env = 'prod'";
    assert!(query_ids(&hub, prod).await.is_empty());
    clock.advance(Duration::from_secs(2));
    assert_eq!(query_ids(&hub, prod).await, ["lag1"]);

    // A delete: the device lingers in queries until the lag has passed.
    let deleted = hub.call(Method::DELETE, "/devices/lag1", None).await;
    assert_eq!(deleted.status, 204);
    hub.call(Method::GET, "/twins/lag1", None)
        .await
        .assert_error(404, "DeviceNotFound");
    assert_eq!(query_ids(&hub, prod).await, ["lag1"]);
    clock.advance(Duration::from_secs(2));
    assert!(query_ids(&hub, prod).await.is_empty());
}

#[tokio::test]
async fn without_lag_queries_are_immediate() {
    let hub = TestHub::lenient().await;
    hub.create_device("now1", json!({})).await;
    assert_eq!(query_ids(&hub, "SELECT * FROM devices").await, ["now1"]);
}

#[tokio::test]
async fn configurations_are_evaluated_at_creation_and_then_on_schedule() {
    let (hub, clock) = manual_hub(|o| o.realism.config_eval_interval_secs = 300).await;
    hub.create_edge("early", None).await;
    tag(&hub, "early", json!({"env": "prod"})).await;
    let created = hub
        .call(
            Method::PUT,
            "/configurations/sched",
            Some(standard_deployment("tags.env = 'prod'")),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    // Evaluated at creation.
    assert_eq!(created.body["systemMetrics"]["results"]["targetedCount"], 1);
    let agent = |id: &'static str| {
        let hub = &hub;
        async move {
            hub.call(
                Method::GET,
                &format!("/twins/{id}/modules/%24edgeAgent"),
                None,
            )
            .await
            .body
        }
    };
    let early = agent("early").await;
    assert_eq!(
        early["properties"]["desired"]["modules"]["base"]["settings"]["image"],
        "base:1"
    );
    assert_eq!(early["configurations"]["sched"]["status"], "Applied");

    // A device that matches later waits for the next evaluation.
    hub.create_edge("late", None).await;
    tag(&hub, "late", json!({"env": "prod"})).await;
    let late = agent("late").await;
    assert!(
        late["properties"]["desired"].get("modules").is_none(),
        "{late}"
    );
    assert!(late.get("configurations").is_none(), "{late}");
    // The early device reports success; metrics still show the last evaluation.
    let version = early["properties"]["desired"]["$version"].clone();
    let reported = hub
        .call(
            Method::PATCH,
            "/devices/early/modules/%24edgeAgent/twin/reported",
            Some(json!({"lastDesiredVersion": version, "lastDesiredStatus": {"code": 200}})),
        )
        .await;
    assert_eq!(reported.status, 204, "{}", reported.body);
    let metrics = hub.call(Method::GET, "/configurations/sched", None).await;
    let results = &metrics.body["systemMetrics"]["results"];
    assert_eq!(results["targetedCount"], 1);
    assert_eq!(results["reportedSuccessfulCount"], 0);

    let schedule = hub.emulator.stats()["configurationEvaluation"].clone();
    assert_eq!(schedule["intervalSecs"], 300);
    assert_eq!(schedule["count"], 1);
    clock.advance(Duration::from_secs(300));
    let metrics = hub.call(Method::GET, "/configurations/sched", None).await;
    let results = &metrics.body["systemMetrics"]["results"];
    assert_eq!(results["targetedCount"], 2, "{results}");
    assert_eq!(results["appliedCount"], 2);
    assert_eq!(results["reportedSuccessfulCount"], 1);
    assert_eq!(
        agent("late").await["configurations"]["sched"]["status"],
        "Applied"
    );
    assert_eq!(hub.emulator.stats()["configurationEvaluation"]["count"], 2);

    // A changed target condition also waits for the next evaluation.
    let mut retarget = standard_deployment("tags.env = 'none'");
    retarget["id"] = json!("sched");
    let updated = hub
        .call_with(
            Method::PUT,
            "/configurations/sched",
            Some(retarget),
            Some(hub.token("iothubowner")),
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(
        agent("late").await["configurations"]["sched"]["status"],
        "Applied"
    );
    clock.advance(Duration::from_secs(300));
    assert!(agent("late").await.get("configurations").is_none());
}

#[tokio::test]
async fn labels_follow_azures_rule_when_checked() {
    let slash = json!({"edgehierarchy.dev/uid": "u-1"});
    let mut with_slash = standard_deployment("*");
    with_slash["labels"] = slash;
    // Switched off, the emulator's old leniency.
    let lenient = TestHub::start(|o| o.realism.check_labels = false).await;
    let accepted = lenient
        .call(Method::PUT, "/configurations/l1", Some(with_slash.clone()))
        .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);

    // On by default, as in Azure.
    let checked = TestHub::lenient().await;
    checked
        .call(Method::PUT, "/configurations/l1", Some(with_slash))
        .await
        .assert_error(400, "ArgumentInvalid");
    let mut fine = standard_deployment("*");
    fine["labels"] = json!({"HostPlatform": "Linux", "version": "3.0.1"});
    let answer = checked
        .call(Method::PUT, "/configurations/l2", Some(fine.clone()))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Updates are checked too.
    fine["id"] = json!("l2");
    fine["labels"] = json!({"$reserved": "x"});
    checked
        .call_with(
            Method::PUT,
            "/configurations/l2",
            Some(fine),
            Some(checked.token("iothubowner")),
            &[("If-Match", "*")],
        )
        .await
        .assert_error(400, "ArgumentInvalid");
}

/// `SELECT * FROM devices WHERE deviceId = 'xxx…'` of exactly `length` characters.
fn query_of_length(length: usize) -> String {
    let head = "SELECT * FROM devices WHERE deviceId = '";
    format!("{head}{}'", "x".repeat(length - head.len() - 1))
}

#[tokio::test]
async fn query_expressions_are_at_most_8192_characters() {
    // On by default, as in Azure.
    let hub = TestHub::lenient().await;
    assert_eq!(query(&hub, &query_of_length(8_192)).await.status, 200);
    let long = query(&hub, &query_of_length(8_193)).await;
    long.assert_error(400, "ArgumentInvalid");
    assert!(
        long.body["Message"].as_str().unwrap().contains("8192"),
        "{}",
        long.body
    );
    // No limit when switched off.
    let unlimited = TestHub::start(|o| o.realism.max_query_length = 0).await;
    assert_eq!(query(&unlimited, &query_of_length(9_000)).await.status, 200);
}

#[tokio::test]
async fn string_literals_follow_azure() {
    let hub = TestHub::lenient().await;
    hub.create_edge("operator'sDevice", None).await;
    // Twin queries: the documented backslash escape and a doubled quote both work.
    for sql in [
        r"SELECT * FROM devices WHERE deviceId = 'operator\'sDevice'",
        "SELECT * FROM devices WHERE deviceId = 'operator''sDevice'",
        r#"SELECT * FROM devices WHERE deviceId = "operator's\u0044evice""#,
    ] {
        assert_eq!(query_ids(&hub, sql).await, ["operator'sDevice"], "{sql}");
    }
    // Escapes the reference does not list are refused.
    query(&hub, r"SELECT * FROM devices WHERE deviceId = 'a\nb'")
        .await
        .assert_error(400, "ArgumentInvalid");

    // Target conditions: a quote is doubled; a backslash or a double quote is refused.
    for bad in [r"deviceId='operator\'sDevice'", r#"deviceId="operator""#] {
        hub.call(
            Method::PUT,
            "/configurations/quotes",
            Some(standard_deployment(bad)),
        )
        .await
        .assert_error(400, "ArgumentInvalid");
    }
    let doubled = hub
        .call(
            Method::PUT,
            "/configurations/quotes",
            Some(standard_deployment("deviceId='operator''sDevice'")),
        )
        .await;
    assert_eq!(doubled.status, 200, "{}", doubled.body);
    assert_eq!(doubled.body["systemMetrics"]["results"]["targetedCount"], 1);
    let tested = hub
        .call(
            Method::POST,
            "/configurations/testQueries",
            Some(json!({"targetCondition": r"deviceId='a\'b'"})),
        )
        .await;
    assert!(
        tested.body["targetConditionError"]
            .as_str()
            .unwrap()
            .contains("backslash"),
        "{}",
        tested.body
    );

    // --check-literals=false restores the lenient rules.
    let lenient = TestHub::start(|o| o.realism.check_literals = false).await;
    assert_eq!(
        query(&lenient, r"SELECT * FROM devices WHERE deviceId = 'a\nb'")
            .await
            .status,
        200
    );
    let quoted = lenient
        .call(
            Method::PUT,
            "/configurations/quotes",
            Some(standard_deployment(r#"deviceId="x""#)),
        )
        .await;
    assert_eq!(quoted.status, 200, "{}", quoted.body);
}

#[tokio::test]
async fn twin_keys_refuse_hash_and_content_is_checked() {
    let hub = TestHub::lenient().await;
    hub.create_edge("keys1", None).await;
    hub.call(
        Method::PATCH,
        "/twins/keys1",
        Some(json!({"tags": {"a#b": 1}})),
    )
    .await
    .assert_error(400, "ArgumentInvalid");
    hub.call(
        Method::PATCH,
        "/twins/keys1",
        Some(json!({"properties": {"desired": {"ok": {"a b": 1}}}})),
    )
    .await
    .assert_error(400, "ArgumentInvalid");
    hub.call(
        Method::PATCH,
        "/devices/keys1/twin/reported",
        Some(json!({"m2(<#a": 1})),
    )
    .await
    .assert_error(400, "ArgumentInvalid");
    let mut hashed = standard_deployment("*");
    hashed["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["base"]["env"] =
        json!({"A#B": {"value": "1"}});
    hub.call(Method::PUT, "/configurations/hashed", Some(hashed.clone()))
        .await
        .assert_error(400, "InvalidConfigurationContent");
    hub.call(
        Method::PUT,
        "/configurations/dotted",
        Some(json!({"targetCondition": "*", "content": {"deviceContent": {"properties.desired.a#b": 1}}})),
    )
    .await
    .assert_error(400, "InvalidConfigurationContent");
    let bulk = hub
        .call(
            Method::POST,
            "/devices",
            Some(json!([{"id": "keys2", "importMode": "create", "tags": {"x#y": 1}}])),
        )
        .await;
    assert_eq!(bulk.status, 400, "{}", bulk.body);
    assert_eq!(bulk.body["errors"][0]["errorCode"], "ArgumentInvalid");

    let lenient = TestHub::start(|o| o.realism.check_twin_keys = false).await;
    lenient.create_edge("keys1", None).await;
    let tagged = lenient
        .call(
            Method::PATCH,
            "/twins/keys1",
            Some(json!({"tags": {"a#b": 1}})),
        )
        .await;
    assert_eq!(tagged.status, 200, "{}", tagged.body);
    let created = lenient
        .call(Method::PUT, "/configurations/hashed", Some(hashed))
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    // Dots and dollars stay refused in either mode.
    lenient
        .call(
            Method::PATCH,
            "/twins/keys1",
            Some(json!({"tags": {"a.b": 1}})),
        )
        .await
        .assert_error(400, "ArgumentInvalid");
}

#[tokio::test]
async fn queries_and_twin_operations_are_billed_against_the_daily_quota() {
    let (hub, clock) = manual_hub(|o| o.realism.daily_message_quota = Some(12)).await;
    let devices: Vec<Value> = (0..20)
        .map(|i| {
            json!({"id": format!("bill{i:02}"), "importMode": "create",
                        "tags": {"padding": "p".repeat(200)}})
        })
        .collect();
    assert_eq!(
        hub.call(Method::POST, "/devices", Some(Value::Array(devices)))
            .await
            .status,
        200
    );
    let messages = |hub: &TestHub| hub.emulator.stats()["messages"].clone();
    // Registry operations are free.
    assert_eq!(messages(&hub)["total"], 0);
    // A query is billed by its result in 4 KB chunks.
    let all = query(&hub, "SELECT * FROM devices").await;
    let bytes = all.body.to_string().len();
    let chunks = bytes.div_ceil(4096) as u64;
    assert!(chunks >= 2, "{bytes} bytes");
    assert_eq!(messages(&hub)["today"], chunks);
    assert_eq!(messages(&hub)["byOperation"]["devices.query"], chunks);
    // An empty result still costs one message.
    query(&hub, "SELECT * FROM devices WHERE deviceId = 'none'").await;
    // Twin reads and updates cost one message each here.
    assert_eq!(
        hub.call(Method::GET, "/twins/bill00", None).await.status,
        200
    );
    tag(&hub, "bill00", json!({"env": "prod"})).await;
    assert_eq!(messages(&hub)["today"], chunks + 3);
    assert_eq!(messages(&hub)["byOperation"]["twins.get"], 1);
    assert_eq!(messages(&hub)["byOperation"]["twins.update"], 1);

    // Use the rest; then every request is refused, registry operations too.
    let mut used = chunks + 3;
    while used < 12 {
        assert_eq!(
            hub.call(Method::GET, "/twins/bill01", None).await.status,
            200
        );
        used += 1;
    }
    hub.call(Method::GET, "/twins/bill01", None)
        .await
        .assert_error(403, "IotHubQuotaExceeded");
    hub.call(Method::GET, "/devices/bill01", None)
        .await
        .assert_error(403, "IotHubQuotaExceeded");
    let stats = messages(&hub);
    assert_eq!(stats["rejected"], 2);
    assert_eq!(stats["dailyQuota"], 12);

    // The next UTC day starts a new quota.
    let now = clock.now_millis();
    let to_midnight = 86_400_000 - now.rem_euclid(86_400_000);
    clock.advance(Duration::from_millis(u64::try_from(to_midnight).unwrap()));
    assert_eq!(
        hub.call(Method::GET, "/devices/bill01", None).await.status,
        200
    );
    assert_eq!(messages(&hub)["today"], 0);
}

#[tokio::test]
async fn telemetry_and_device_twin_calls_are_metered_without_a_quota() {
    let hub = TestHub::lenient().await;
    hub.create_device("meter1", json!({})).await;
    let event = hub
        .call(
            Method::POST,
            "/devices/meter1/messages/events",
            Some(json!({"blob": "b".repeat(6 * 1024)})),
        )
        .await;
    assert_eq!(event.status, 204);
    assert_eq!(
        hub.call(Method::GET, "/devices/meter1/twin", None)
            .await
            .status,
        200
    );
    let messages = &hub.emulator.stats()["messages"];
    // A 6 KB message is billed as two.
    assert_eq!(messages["byOperation"]["device.messages.send"], 2);
    assert_eq!(messages["byOperation"]["device.twin.get"], 1);
    assert_eq!(messages["dailyQuota"], Value::Null);
}

#[tokio::test]
async fn traffic_shaping_queues_before_429_and_retry_after_can_be_withheld() {
    let shaped = |shaping: u64, retry_after: bool| {
        manual_hub(move |o| {
            o.quotas = Some((Sku::S1, 1));
            o.realism.throttle_shaping_ms = shaping;
            o.realism.retry_after = retry_after;
        })
    };
    let patch = json!({"tags": {"n": 1}});
    let (hub, clock) = shaped(1_500, true).await;
    hub.create_device("shape1", json!({})).await;
    let start = clock.now_millis();
    for _ in 0..50 {
        let answer = hub
            .call(Method::PATCH, "/twins/shape1", Some(patch.clone()))
            .await;
        assert_eq!(answer.status, 200);
    }
    // The 51st twin update in a second waits for the next window instead of failing.
    let queued = hub
        .call(Method::PATCH, "/twins/shape1", Some(patch.clone()))
        .await;
    assert_eq!(queued.status, 200, "{}", queued.body);
    let stats = hub.emulator.stats();
    assert_eq!(stats["shaped"]["requests"], 1);
    assert_eq!(stats["shaped"]["delayMs"], 1_000);
    assert_eq!(stats["throttled"], 0);
    assert_eq!(clock.now_millis() - start, 1_000);

    // Beyond what shaping may absorb: 429, here without Retry-After.
    let (strict, _) = shaped(500, false).await;
    strict.create_device("shape2", json!({})).await;
    for _ in 0..50 {
        strict
            .call(Method::PATCH, "/twins/shape2", Some(patch.clone()))
            .await;
    }
    let refused = strict
        .call(Method::PATCH, "/twins/shape2", Some(patch.clone()))
        .await;
    refused.assert_error(429, "ThrottlingException");
    assert!(refused.header("retry-after").is_none());
    assert_eq!(strict.emulator.stats()["shaped"]["requests"], 0);
}

#[tokio::test]
async fn configuration_and_module_limits() {
    let hub = TestHub::start(|o| o.realism.max_configurations = 2).await;
    hub.create_edge("limit1", None).await;
    for (id, body) in [
        ("base", standard_deployment("*")),
        ("layer", layered_deployment("*")),
    ] {
        let answer = hub
            .call(Method::PUT, &format!("/configurations/{id}"), Some(body))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    // Layered deployments count against the same limit.
    hub.call(
        Method::PUT,
        "/configurations/third",
        Some(layered_deployment("*")),
    )
    .await
    .assert_error(413, "ConfigurationCountLimitExceeded");

    let hub = TestHub::lenient().await;
    hub.create_edge("limit2", None).await;
    let fifty = hub
        .call(
            Method::PUT,
            "/configurations/fifty",
            Some(deployment_with_modules(50)),
        )
        .await;
    assert_eq!(fifty.status, 200, "{}", fifty.body);
    hub.call(
        Method::PUT,
        "/configurations/fifty-one",
        Some(deployment_with_modules(51)),
    )
    .await
    .assert_error(400, "InvalidConfigurationContent");
    let content = deployment_with_modules(51)["content"].clone();
    let lone = TestHub::lenient().await;
    lone.create_edge("limit3", None).await;
    lone.call(
        Method::POST,
        "/devices/limit3/applyConfigurationContent",
        Some(content),
    )
    .await
    .assert_error(400, "InvalidConfigurationContent");
    let unlimited = TestHub::start(|o| o.realism.max_modules_per_deployment = 0).await;
    let answer = unlimited
        .call(
            Method::PUT,
            "/configurations/many",
            Some(deployment_with_modules(60)),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn bulk_create_can_register_a_device_without_its_twin() {
    let hub = TestHub::start(|o| {
        o.realism.registered_without_twin = RegisteredWithoutTwin::parse("w1").unwrap();
    })
    .await;
    let answer = hub
        .call(
            Method::POST,
            "/devices",
            Some(json!([
                {"id": "w1", "importMode": "create", "tags": {"owner": "me"}},
                {"id": "w2", "importMode": "create", "tags": {"owner": "me"}},
            ])),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["isSuccessful"], true);
    let warnings = answer.body["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{}", answer.body);
    assert_eq!(warnings[0]["deviceId"], "w1");
    assert_eq!(warnings[0]["warningCode"], "DeviceRegisteredWithoutTwin");
    // The identity exists, its twin has none of the request's tags.
    assert_eq!(hub.call(Method::GET, "/devices/w1", None).await.status, 200);
    let lost = hub.call(Method::GET, "/twins/w1", None).await;
    assert_eq!(lost.body["tags"], json!({}));
    let kept = hub.call(Method::GET, "/twins/w2", None).await;
    assert_eq!(kept.body["tags"]["owner"], "me");

    let every =
        TestHub::start(|o| o.realism.registered_without_twin = RegisteredWithoutTwin::Rate(1.0))
            .await;
    let answer = every
        .call(
            Method::POST,
            "/devices",
            Some(
                json!([{"id": "r1", "importMode": "create"}, {"id": "r2", "importMode": "create"}]),
            ),
        )
        .await;
    assert_eq!(answer.body["warnings"].as_array().unwrap().len(), 2);
}
