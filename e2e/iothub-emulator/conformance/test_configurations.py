"""Automatic, layered and per-device deployments through the official SDK."""

import copy
import datetime

import pytest
from azure.iot.hub.models import (
    Configuration,
    ConfigurationContent,
    ConfigurationQueriesTestInput,
    Twin,
)
from msrest.exceptions import HttpOperationError

from support import assert_sdk_error, unique


def module(image, status="running"):
    return {
        "version": "1.0", "type": "docker", "status": status, "restartPolicy": "always",
        "settings": {"image": image, "createOptions": "{}"},
    }


def base_manifest(module_name, image):
    """A standard (full) deployment: complete $edgeAgent and $edgeHub desired properties."""
    return {
        "$edgeAgent": {"properties.desired": {
            "schemaVersion": "1.1",
            "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25", "loggingOptions": "", "registryCredentials": {}}},
            "systemModules": {
                "edgeAgent": {"type": "docker", "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.5", "createOptions": "{}"}},
                "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                            "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.5", "createOptions": "{}"}},
            },
            "modules": {module_name: module(image)},
        }},
        "$edgeHub": {"properties.desired": {
            "schemaVersion": "1.1",
            "routes": {"upstream": "FROM /messages/* INTO $upstream"},
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
        }},
    }


def layered_manifest():
    """A layered deployment: dotted paths that merge into whatever the base deployment set."""
    return {
        "$edgeAgent": {"properties.desired.modules.monitor": module("example.azurecr.io/monitor:2.0")},
        "$edgeHub": {"properties.desired.routes.monitor": "FROM /messages/modules/monitor/* INTO $upstream"},
    }


def raw_module_twin(rm, device_id, module_id):
    """The module twin as JSON: the SDK's Twin model has no `configurations` field."""
    return rm.protocol.modules.get_twin(device_id, module_id, raw=True).response.json()


def as_utc(moment):
    """msrest yields naive datetimes for timestamps without an offset; IoT Hub times are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def strip_metadata(desired):
    return {k: v for k, v in desired.items() if not k.startswith("$")}


def tag_edge_device(rm, device_id, tags):
    rm.create_device_with_sas(device_id, "", "", "enabled", iot_edge=True)
    twin = rm.get_twin(device_id)
    rm.update_twin(device_id, Twin(tags=tags), twin.etag)


def test_configuration_lifecycle_with_priority_and_layering(hub):
    rm = hub.registry_manager()
    cm = hub.configuration_manager()
    run = unique("cfg")
    device_id, bystander_id = f"{run}-gw", f"{run}-other"
    tag_edge_device(rm, device_id, {"run": run, "role": "gateway"})
    tag_edge_device(rm, bystander_id, {"run": run, "role": "sensor"})
    condition = f"tags.run = '{run}' AND tags.role = 'gateway'"

    base_id, old_id, layer_id = f"{run}-base", f"{run}-old", f"{run}-layer"
    base_content = base_manifest("sensor", "example.azurecr.io/sensor:1.0")
    old_content = base_manifest("legacy", "example.azurecr.io/legacy:0.9")
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)

    created = {}
    for config_id, content, priority in (
        (old_id, old_content, 5), (base_id, base_content, 10), (layer_id, layered_manifest(), 20),
    ):
        config = Configuration(
            id=config_id, schema_version="1.0", labels={"run": run},
            content=ConfigurationContent(modules_content=content),
            target_condition=condition, priority=priority,
        )
        result = cm.create_configuration(config)
        assert result.id == config_id
        assert result.priority == priority
        assert result.target_condition == condition
        assert result.labels == {"run": run}
        assert result.content.modules_content == content
        assert result.content.device_content in ({}, None)
        assert isinstance(result.etag, str) and result.etag
        assert as_utc(result.created_time_utc) >= before
        assert as_utc(result.last_updated_time_utc) >= as_utc(result.created_time_utc)
        created[config_id] = result

    for config_id, result in created.items():
        read = cm.get_configuration(config_id)
        assert read.id == config_id
        assert read.etag == result.etag
        assert read.priority == result.priority
        assert read.target_condition == condition
        assert read.content.modules_content == result.content.modules_content
    listed = {c.id: c for c in cm.get_configurations()}
    assert {base_id, old_id, layer_id} <= listed.keys()
    assert listed[layer_id].priority == 20

    # The device gets the highest-priority standard deployment with the layer merged on top;
    # the lower-priority standard deployment is targeted but not applied.
    agent = raw_module_twin(rm, device_id, "$edgeAgent")
    desired = strip_metadata(agent["properties"]["desired"])
    assert desired["schemaVersion"] == "1.1"
    assert desired["runtime"] == base_content["$edgeAgent"]["properties.desired"]["runtime"]
    assert desired["systemModules"] == base_content["$edgeAgent"]["properties.desired"]["systemModules"]
    assert set(desired["modules"]) == {"sensor", "monitor"}
    assert desired["modules"]["sensor"] == module("example.azurecr.io/sensor:1.0")
    assert desired["modules"]["monitor"] == module("example.azurecr.io/monitor:2.0")
    assert agent["configurations"] == {
        base_id: {"status": "Applied"}, layer_id: {"status": "Applied"}, old_id: {"status": "Targeted"},
    }
    edge_hub = raw_module_twin(rm, device_id, "$edgeHub")
    assert strip_metadata(edge_hub["properties"]["desired"])["routes"] == {
        "upstream": "FROM /messages/* INTO $upstream",
        "monitor": "FROM /messages/modules/monitor/* INTO $upstream",
    }
    # A device outside the target condition is untouched.
    assert raw_module_twin(rm, bystander_id, "$edgeAgent").get("configurations") in (None, {})
    assert strip_metadata(raw_module_twin(rm, bystander_id, "$edgeAgent")["properties"]["desired"]) == {}

    # System metrics count targeted and applied devices.
    metrics = {cid: cm.get_configuration(cid).system_metrics.results for cid in (base_id, old_id, layer_id)}
    assert metrics[base_id]["targetedCount"] == 1 and metrics[base_id]["appliedCount"] == 1
    assert metrics[layer_id]["targetedCount"] == 1 and metrics[layer_id]["appliedCount"] == 1
    assert metrics[old_id]["targetedCount"] == 1 and metrics[old_id]["appliedCount"] == 0

    # Priority may change (with the etag, quoted as Azure expects): 15 puts the old standard
    # deployment above the base one (10) and still below the layer (20)...
    changed = copy.deepcopy(created[old_id])
    changed.priority = 15
    updated = cm.update_configuration(changed, f'"{created[old_id].etag}"')
    assert updated.priority == 15
    assert updated.etag != created[old_id].etag
    assert updated.content.modules_content == old_content
    agent = raw_module_twin(rm, device_id, "$edgeAgent")
    assert set(agent["properties"]["desired"]["modules"]) == {"legacy", "monitor"}
    assert agent["configurations"][old_id] == {"status": "Applied"}
    assert agent["configurations"][base_id] == {"status": "Targeted"}
    # ...but content is immutable.
    tampered = copy.deepcopy(updated)
    tampered.content = ConfigurationContent(modules_content=base_content)
    with pytest.raises(HttpOperationError) as immutable:
        cm.update_configuration(tampered, f'"{updated.etag}"')
    assert_sdk_error(immutable, 400, "CannotModifyImmutableConfigurationContent")

    # Creating an existing id is a conflict.
    with pytest.raises(HttpOperationError) as exists:
        cm.create_configuration(Configuration(id=base_id, content=ConfigurationContent(modules_content=base_content),
                                              target_condition=condition, priority=1))
    assert_sdk_error(exists, 409, "ConfigurationAlreadyExists")

    # Delete, then it is gone.
    for config_id in (layer_id, old_id, base_id):
        assert cm.delete_configuration(config_id) is None
        with pytest.raises(HttpOperationError) as gone:
            cm.get_configuration(config_id)
        assert_sdk_error(gone, 404, "ConfigurationNotFound")
    assert not {base_id, old_id, layer_id} & {c.id for c in cm.get_configurations()}


def test_configuration_test_queries(hub):
    cm = hub.configuration_manager()
    ok = cm.test_configuration_queries(ConfigurationQueriesTestInput(
        target_condition="tags.environment = 'prod' AND deviceId IN ['a', 'b']",
        custom_metric_queries={"running": "SELECT deviceId FROM devices.modules WHERE moduleId = '$edgeAgent'"},
    ))
    assert not ok.target_condition_error
    assert not (ok.custom_metric_query_errors or {}).get("running")
    bad = cm.test_configuration_queries(ConfigurationQueriesTestInput(
        target_condition="tags.environment = ",
        custom_metric_queries={"broken": "SELECT deviceId FROM"},
    ))
    assert isinstance(bad.target_condition_error, str) and bad.target_condition_error
    assert isinstance(bad.custom_metric_query_errors["broken"], str) and bad.custom_metric_query_errors["broken"]


def test_apply_configuration_on_edge_device(hub):
    rm = hub.registry_manager()
    cm = hub.configuration_manager()
    device_id = unique("single")
    rm.create_device_with_sas(device_id, "", "", "enabled", iot_edge=True)
    before = {m: rm.get_module_twin(device_id, m) for m in ("$edgeAgent", "$edgeHub")}
    content = base_manifest("sensor", "example.azurecr.io/sensor:3.1")

    assert cm.apply_configuration_on_edge_device(device_id, ConfigurationContent(modules_content=content)) is None

    for module_id in ("$edgeAgent", "$edgeHub"):
        twin = rm.get_module_twin(device_id, module_id)
        assert strip_metadata(twin.properties.desired) == content[module_id]["properties.desired"]
        assert twin.properties.desired["$version"] > before[module_id].properties.desired["$version"]
        assert twin.etag != before[module_id].etag

    # Applying again replaces the manifest rather than merging it.
    second = base_manifest("other", "example.azurecr.io/other:1.0")
    cm.apply_configuration_on_edge_device(device_id, ConfigurationContent(modules_content=second))
    agent = rm.get_module_twin(device_id, "$edgeAgent")
    assert set(agent.properties.desired["modules"]) == {"other"}

    # deviceContent is not an edge manifest.
    with pytest.raises(HttpOperationError) as invalid:
        cm.apply_configuration_on_edge_device(
            device_id, ConfigurationContent(device_content={"properties.desired.x": 1}))
    assert_sdk_error(invalid, 400, "InvalidConfigurationContent")

    with pytest.raises(HttpOperationError) as missing:
        cm.apply_configuration_on_edge_device(unique("absent"), ConfigurationContent(modules_content=content))
    assert_sdk_error(missing, 404, "DeviceNotFound")


def test_sdk_update_configuration_with_unquoted_etag_conflicts_like_azure(hub):
    """azure-iot-hub sends the configuration etag unquoted on update; against Azure every such
    call fails with 409 Conflict (Azure/azure-iot-hub-python#2, reproduced by a second user in
    2024). Quoting the etag (previous test) is what works."""
    cm = hub.configuration_manager()
    config_id = unique("unquoted")
    created = cm.create_configuration(Configuration(
        id=config_id, content=ConfigurationContent(modules_content=layered_manifest()),
        target_condition="tags.nothing = 'matches'", priority=1,
    ))
    created.target_condition = "tags.environment = 'test'"
    with pytest.raises(HttpOperationError) as conflict:
        cm.update_configuration(created, created.etag)
    assert conflict.value.response.status_code == 409, conflict.value.response.text
    unchanged = cm.get_configuration(config_id)
    assert unchanged.target_condition == "tags.nothing = 'matches'"
    assert unchanged.etag == created.etag
    cm.delete_configuration(config_id)
