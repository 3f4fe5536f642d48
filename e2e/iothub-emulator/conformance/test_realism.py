"""Azure behaviours beyond the swagger, each behind an emulator flag, seen through the official SDK.

Tests that need a flag start their own emulator with `make_hub(...)`; tests of rules that are on
by default use the shared `hub` (lenient and `--strict`). Raw requests are used only where the
SDK would hide what is tested (msrest retries 429 answers).
"""

import concurrent.futures
import time

import pytest
import requests
from azure.iot.hub.models import (
    Configuration,
    ConfigurationContent,
    DeviceCapabilities,
    ExportImportDevice,
    QuerySpecification,
    Twin,
)
from msrest.exceptions import HttpOperationError

from support import assert_hub_error, assert_sdk_error, sas_token, stats, unique, wait_until


def query_ids(rm, sql):
    return [twin.device_id for twin in rm.query_iot_hub(QuerySpecification(query=sql)).items]


def manifest(modules=None):
    """A standard deployment; `modules` maps module names to images."""
    modules = {"sensor": "example.azurecr.io/sensor:1.0"} if modules is None else modules
    return {
        "$edgeAgent": {"properties.desired": {
            "schemaVersion": "1.1",
            "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
            "systemModules": {},
            "modules": {
                name: {"type": "docker", "status": "running", "restartPolicy": "always",
                       "settings": {"image": image, "createOptions": "{}"}}
                for name, image in modules.items()
            },
        }},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {"up": "FROM /messages/* INTO $upstream"}}},
    }


def configuration(config_id, condition, content=None, labels=None, priority=10):
    return Configuration(
        id=config_id, labels=labels or {}, priority=priority, target_condition=condition,
        content=ConfigurationContent(modules_content=content if content is not None else manifest()),
    )


def tag_edge_device(rm, device_id, tags):
    rm.create_device_with_sas(device_id, "", "", "enabled", iot_edge=True)
    rm.update_twin(device_id, Twin(tags=tags), rm.get_twin(device_id).etag)


def agent_twin(rm, device_id):
    return rm.protocol.modules.get_twin(device_id, "$edgeAgent", raw=True).response.json()


def query_of_length(length):
    head = "SELECT * FROM devices WHERE deviceId = '"
    return head + "x" * (length - len(head) - 1) + "'"


# 1. Query lag -----------------------------------------------------------------------------------

def test_twin_queries_see_writes_after_the_lag_and_get_at_once(make_hub):
    hub = make_hub("--query-lag-ms", "1500")
    rm = hub.registry_manager()
    device_id = unique("lag")
    rm.create_device_with_sas(device_id, "", "", "enabled")
    created = time.monotonic()
    assert rm.get_twin(device_id).device_id == device_id
    by_id = f"SELECT * FROM devices WHERE deviceId = '{device_id}'"
    assert query_ids(rm, by_id) == []
    assert wait_until(lambda: query_ids(rm, by_id)) == [device_id]
    assert time.monotonic() - created >= 1.0

    rm.update_twin(device_id, Twin(tags={"stage": "two"}), rm.get_twin(device_id).etag)
    assert rm.get_twin(device_id).tags == {"stage": "two"}
    tagged = f"SELECT * FROM devices WHERE deviceId = '{device_id}' AND tags.stage = 'two'"
    assert query_ids(rm, tagged) == []
    assert wait_until(lambda: query_ids(rm, tagged)) == [device_id]

    rm.delete_device(device_id)
    with pytest.raises(HttpOperationError) as gone:
        rm.get_twin(device_id)
    assert_sdk_error(gone, 404, "DeviceNotFound")
    assert query_ids(rm, by_id) == [device_id]
    wait_until(lambda: query_ids(rm, by_id) == [])


# 2. Configuration evaluation interval ----------------------------------------------------------

def test_configurations_are_evaluated_at_creation_and_then_every_interval(make_hub):
    hub = make_hub("--config-eval-interval-secs", "2")
    rm, cm = hub.registry_manager(), hub.configuration_manager()
    run = unique("eval")
    early, late = f"{run}-early", f"{run}-late"
    tag_edge_device(rm, early, {"run": run})
    created = cm.create_configuration(configuration(f"{run}-cfg", f"tags.run = '{run}'"))
    # Evaluated at creation: the matching device has the modules, the metrics count it.
    assert created.system_metrics.results["targetedCount"] == 1
    assert "sensor" in agent_twin(rm, early)["properties"]["desired"]["modules"]

    before = stats(hub)["configurationEvaluation"]
    assert before["intervalSecs"] == 2
    tag_edge_device(rm, late, {"run": run})
    desired = agent_twin(rm, late)["properties"]["desired"]
    if stats(hub)["configurationEvaluation"]["count"] == before["count"]:
        # No evaluation ran since the device appeared: it has nothing yet.
        assert "modules" not in desired, desired
        assert cm.get_configuration(created.id).system_metrics.results["targetedCount"] == 1
    wait_until(lambda: "modules" in agent_twin(rm, late)["properties"]["desired"], timeout=10)
    assert agent_twin(rm, late)["configurations"][created.id]["status"] == "Applied"
    assert cm.get_configuration(created.id).system_metrics.results["targetedCount"] == 2
    assert stats(hub)["configurationEvaluation"]["count"] > before["count"]


# 3. Configuration labels -----------------------------------------------------------------------

def test_labels_follow_azures_character_rule(make_hub):
    lenient = make_hub("--check-labels=false")
    slash = {"edgehierarchy.dev/uid": "1234"}
    cm = lenient.configuration_manager()
    assert cm.create_configuration(configuration(unique("lbl"), "*", labels=slash)).labels == slash

    checked = make_hub()
    cm = checked.configuration_manager()
    for labels in (slash, {"$reserved": "x"}, {"key": "with space"}, {"k": "x" * 129}):
        with pytest.raises(HttpOperationError) as refused:
            cm.create_configuration(configuration(unique("lbl"), "*", labels=labels))
        assert_sdk_error(refused, 400, "ArgumentInvalid")
    fine = {"HostPlatform": "Linux", "version": "3.0.1", "team": "a-b:c.d+e%f_g#h*i?j!k(l)m,n=o@p;q'r"}
    assert cm.create_configuration(configuration(unique("lbl"), "*", labels=fine)).labels == fine


# 4. Query expression length --------------------------------------------------------------------

def test_query_expressions_are_limited_to_8192_characters(make_hub):
    hub = make_hub("--max-query-length", "8192")
    rm = hub.registry_manager()
    assert rm.query_iot_hub(QuerySpecification(query=query_of_length(8192))).items == []
    with pytest.raises(HttpOperationError) as refused:
        rm.query_iot_hub(QuerySpecification(query=query_of_length(8193)))
    assert_sdk_error(refused, 400, "ArgumentInvalid")
    assert "8192" in refused.value.response.json()["Message"]


# 5. String literals ----------------------------------------------------------------------------

def test_string_literals_double_quotes_in_conditions_and_take_documented_escapes(hub):
    rm, cm = hub.registry_manager(), hub.configuration_manager()
    device_id = unique("o'dev")
    rm.create_device_with_sas(device_id, "", "", "enabled", iot_edge=True)
    escaped = device_id.replace("'", "\\'")
    doubled = device_id.replace("'", "''")
    for sql in (f"SELECT * FROM devices WHERE deviceId = '{escaped}'",
                f"SELECT * FROM devices WHERE deviceId = '{doubled}'"):
        assert query_ids(rm, sql) == [device_id], sql
    with pytest.raises(HttpOperationError) as bad_escape:
        rm.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE deviceId = 'a\\nb'"))
    assert_sdk_error(bad_escape, 400, "ArgumentInvalid")

    # Target conditions: single quotes, a quote doubled; backslashes and double quotes refused.
    for condition in (f"deviceId = '{escaped}'", f'deviceId = "{device_id}"'):
        with pytest.raises(HttpOperationError) as refused:
            cm.create_configuration(configuration(unique("lit"), condition))
        assert_sdk_error(refused, 400, "ArgumentInvalid")
    created = cm.create_configuration(configuration(unique("lit"), f"deviceId = '{doubled}'"))
    assert created.system_metrics.results["targetedCount"] == 1
    assert agent_twin(rm, device_id)["configurations"][created.id]["status"] == "Applied"


# 6. Twin keys ----------------------------------------------------------------------------------

def test_twin_keys_refuse_hash_and_configuration_content_is_checked(hub):
    rm, cm = hub.registry_manager(), hub.configuration_manager()
    device_id = unique("keys")
    rm.create_device_with_sas(device_id, "", "", "enabled")
    for twin in (Twin(tags={"a#b": 1}), Twin(tags={"a b": 1}), Twin(tags={"a.b": 1})):
        with pytest.raises(HttpOperationError) as refused:
            rm.update_twin(device_id, twin, "*")
        assert_sdk_error(refused, 400, "ArgumentInvalid")
    content = manifest()
    content["$edgeAgent"]["properties.desired"]["modules"]["sensor"]["env"] = {"A#B": {"value": "1"}}
    with pytest.raises(HttpOperationError) as refused:
        cm.create_configuration(configuration(unique("keys"), "*", content=content))
    assert_sdk_error(refused, 400, "InvalidConfigurationContent")


def test_hash_in_twin_keys_can_be_allowed_again(make_hub):
    hub = make_hub("--check-twin-keys=false")
    rm = hub.registry_manager()
    device_id = unique("keys")
    rm.create_device_with_sas(device_id, "", "", "enabled")
    assert rm.update_twin(device_id, Twin(tags={"a#b": 1}), "*").tags == {"a#b": 1}


# 7. Message metering ---------------------------------------------------------------------------

def test_billed_messages_use_up_the_daily_quota(make_hub):
    hub = make_hub("--daily-message-quota", "8")
    rm = hub.registry_manager()
    run = unique("bill")
    result = rm.bulk_create_or_update_devices([
        ExportImportDevice(id=f"{run}-{n}", import_mode="create", status="enabled",
                           tags={"run": run, "padding": "p" * 300})
        for n in range(15)
    ])
    assert result.is_successful is True
    # Registry operations are not billed.
    assert stats(hub)["messages"]["today"] == 0
    page = rm.query_iot_hub(QuerySpecification(query=f"SELECT * FROM devices WHERE tags.run = '{run}'"))
    assert len(page.items) == 15
    billed = stats(hub)["messages"]
    assert billed["byOperation"]["devices.query"] >= 2, billed  # more than 4 KB of twins
    assert billed["today"] == billed["byOperation"]["devices.query"]
    rm.get_twin(f"{run}-0")
    assert stats(hub)["messages"]["byOperation"]["twins.get"] == 1

    with pytest.raises(HttpOperationError) as exhausted:
        for _ in range(20):
            rm.get_twin(f"{run}-0")
    assert_sdk_error(exhausted, 403, "IotHubQuotaExceeded")
    # Once the quota is gone every request fails, registry reads too.
    with pytest.raises(HttpOperationError) as registry:
        rm.get_device(f"{run}-0")
    assert_sdk_error(registry, 403, "IotHubQuotaExceeded")
    final = stats(hub)["messages"]
    assert final["today"] >= 8 and final["dailyQuota"] == 8 and final["rejected"] >= 2


# 8. Traffic shaping and Retry-After ------------------------------------------------------------

def test_traffic_shaping_queues_a_burst_instead_of_refusing_it(make_hub):
    hub = make_hub("--sku", "S1", "--units", "1", "--throttle-shaping-ms", "3000")
    rm = hub.registry_manager()
    device_id = unique("shape")
    rm.create_device_with_sas(device_id, "", "", "enabled")
    owner = hub.owner
    token = sas_token(owner.host, owner.key, owner.name)
    url = f"{hub.base_url}/twins/{device_id}"

    def patch_twins(count):
        with requests.Session() as session:
            return [session.patch(url, params={"api-version": "2021-04-12"}, json={"tags": {"n": n}},
                                  headers={"Authorization": token}, verify=str(hub.ca_path), timeout=30).status_code
                    for n in range(count)]

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        statuses = [s for batch in pool.map(patch_twins, [10] * 8) for s in batch]
    burst_seconds = time.monotonic() - started
    # 80 twin updates against 50 per second: none is refused.
    assert statuses == [200] * 80
    counters = stats(hub)
    assert counters["throttled"] == 0
    if burst_seconds < 1.0:
        assert counters["shaped"]["requests"] >= 1, (burst_seconds, counters["shaped"])


def test_throttled_answers_can_come_without_retry_after(make_hub):
    hub = make_hub("--sku", "S1", "--units", "1", "--no-retry-after")
    run = unique("noretry")
    for n in range(100):
        response = hub.request("PUT", f"/devices/{run}-{n}", json={"deviceId": f"{run}-{n}"})
        assert response.status_code == 200, response.text
    throttled = hub.request("GET", f"/devices/{run}-0")
    assert_hub_error(throttled, 429, "ThrottlingException", 429001)
    assert "Retry-After" not in throttled.headers


# 9. Limits -------------------------------------------------------------------------------------

def test_configuration_count_includes_layered_deployments(make_hub):
    hub = make_hub("--max-configurations", "2")
    cm = hub.configuration_manager()
    layered = {"$edgeAgent": {"properties.desired.modules.extra": {"settings": {"image": "x:1"}}}}
    cm.create_configuration(configuration(unique("cap"), "*"))
    cm.create_configuration(configuration(unique("cap"), "*", content=layered, priority=20))
    with pytest.raises(HttpOperationError) as full:
        cm.create_configuration(configuration(unique("cap"), "*", content=layered, priority=30))
    assert_sdk_error(full, 413, "ConfigurationCountLimitExceeded")


def test_a_deployment_carries_at_most_50_modules(hub):
    cm = hub.configuration_manager()
    fifty = manifest({f"m{n}": "example.azurecr.io/m:1" for n in range(50)})
    assert len(cm.create_configuration(configuration(unique("mods"), "tags.none = 'x'", content=fifty))
               .content.modules_content["$edgeAgent"]["properties.desired"]["modules"]) == 50
    fifty_one = manifest({f"m{n}": "example.azurecr.io/m:1" for n in range(51)})
    with pytest.raises(HttpOperationError) as refused:
        cm.create_configuration(configuration(unique("mods"), "tags.none = 'x'", content=fifty_one))
    assert_sdk_error(refused, 400, "InvalidConfigurationContent")


# 10. Injected DeviceRegisteredWithoutTwin ------------------------------------------------------

def test_bulk_create_can_register_a_device_without_its_twin(make_hub):
    run = unique("notwin")
    lost, kept = f"{run}-lost", f"{run}-kept"
    hub = make_hub("--inject-registered-without-twin", lost)
    rm = hub.registry_manager()
    tags = {"edgeHierarchy": {"uid": run}}
    result = rm.bulk_create_or_update_devices([
        ExportImportDevice(id=device_id, import_mode="create", status="enabled",
                           capabilities=DeviceCapabilities(iot_edge=True), tags=tags)
        for device_id in (lost, kept)
    ])
    assert result.is_successful is True
    assert result.errors in ([], None)
    assert [(w.device_id, w.warning_code) for w in result.warnings] == [(lost, "DeviceRegisteredWithoutTwin")]
    assert isinstance(result.warnings[0].warning_status, str)
    # The identity exists (with its edge modules); the twin lacks the request's tags.
    assert rm.get_device(lost).capabilities.iot_edge is True
    assert rm.get_twin(lost).tags in ({}, None)
    assert rm.get_twin(kept).tags == tags


# The preset -------------------------------------------------------------------------------------

def test_timing_defaults_follow_azure(make_hub):
    hub = make_hub(timing="azure")
    counters = stats(hub)
    assert counters["configurationEvaluation"]["intervalSecs"] == 300
    assert counters["messages"]["dailyQuota"] is None  # no tier given, so no quota
    rm = hub.registry_manager()
    device_id = unique("lag")
    rm.create_device_with_sas(device_id, "", "", "enabled")
    by_id = f"SELECT * FROM devices WHERE deviceId = '{device_id}'"
    assert query_ids(rm, by_id) == [], "queries lag writes by default (3 s)"
    assert rm.get_twin(device_id).device_id == device_id, "a GET sees the write at once"
    assert wait_until(lambda: query_ids(rm, by_id)) == [device_id]


def test_azure_preset_turns_the_behaviours_on(make_hub):
    hub = make_hub("--azure", "--query-lag-ms", "800", timing="azure")
    rm, cm = hub.registry_manager(), hub.configuration_manager()
    counters = stats(hub)
    assert counters["messages"]["dailyQuota"] == 400_000  # S1, one unit
    assert counters["configurationEvaluation"]["intervalSecs"] == 300
    with pytest.raises(HttpOperationError) as labels:
        cm.create_configuration(configuration(unique("az"), "*", labels={"a/b": "c"}))
    assert_sdk_error(labels, 400, "ArgumentInvalid")
    with pytest.raises(HttpOperationError) as long_query:
        rm.query_iot_hub(QuerySpecification(query=query_of_length(8193)))
    assert_sdk_error(long_query, 400, "ArgumentInvalid")
    device_id = unique("az")
    rm.create_device_with_sas(device_id, "", "", "enabled")
    by_id = f"SELECT * FROM devices WHERE deviceId = '{device_id}'"
    assert query_ids(rm, by_id) == []
    assert wait_until(lambda: query_ids(rm, by_id)) == [device_id]
