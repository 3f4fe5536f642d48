"""Device and module identities through the official SDK (IoTHubRegistryManager)."""

import base64

import pytest
from azure.iot.hub.models import (
    AuthenticationMechanism,
    DeviceCapabilities,
    ExportImportDevice,
    SymmetricKey,
    Twin,
)
from msrest.exceptions import HttpOperationError

from support import assert_sdk_error, unique

SCOPE_PREFIX = "ms-azure-iot-edge://"


def assert_generated_key(key):
    assert isinstance(key, str) and key, f"key not generated: {key!r}"
    assert len(base64.b64decode(key, validate=True)) == 32, f"key is not 32 bytes of base64: {key!r}"


def assert_new_device(device, device_id, *, edge, status="enabled"):
    """Field-by-field check of a device identity freshly created without keys."""
    assert device.device_id == device_id
    assert isinstance(device.generation_id, str) and device.generation_id, device.generation_id
    assert isinstance(device.etag, str) and device.etag
    assert device.status == status
    assert device.connection_state == "Disconnected"
    assert device.cloud_to_device_message_count == 0
    assert device.capabilities.iot_edge is edge
    assert device.authentication.type == "sas"
    keys = device.authentication.symmetric_key
    assert_generated_key(keys.primary_key)
    assert_generated_key(keys.secondary_key)
    assert keys.primary_key != keys.secondary_key
    if edge:
        assert device.device_scope == f"{SCOPE_PREFIX}{device_id}-{device.generation_id}"


def create_edge(rm, device_id, parent_scopes=None):
    return rm.create_device_with_sas(device_id, "", "", "enabled", iot_edge=True, parent_scopes=parent_scopes)


def test_create_edge_device_and_read_it_back(hub):
    rm = hub.registry_manager()
    device_id = unique("edge")
    created = create_edge(rm, device_id)
    assert_new_device(created, device_id, edge=True)
    assert created.parent_scopes == []

    read = rm.get_device(device_id)
    assert read.as_dict() == created.as_dict()

    # The identity etag is also the ETag header (C# treats the header as authoritative).
    raw = hub.request("GET", f"/devices/{device_id}")
    assert raw.status_code == 200
    assert raw.headers.get("ETag") == f'"{created.etag}"'
    assert raw.json()["deviceScope"] == created.device_scope

    # Edge devices get the two system module identities, reached through %24-encoded ids.
    modules = sorted(rm.get_modules(device_id), key=lambda m: m.module_id)
    assert [m.module_id for m in modules] == ["$edgeAgent", "$edgeHub"]
    for module in modules:
        assert module.device_id == device_id
        assert isinstance(module.generation_id, str) and module.generation_id
        assert isinstance(module.etag, str) and module.etag
        assert module.connection_state == "Disconnected"
        assert module.authentication.type == "sas"
        assert_generated_key(module.authentication.symmetric_key.primary_key)
        single = rm.get_module(device_id, module.module_id)
        assert single.as_dict() == module.as_dict()

    for module_id in ("$edgeAgent", "$edgeHub"):
        twin = rm.get_module_twin(device_id, module_id)
        assert twin.device_id == device_id
        assert twin.module_id == module_id
        assert isinstance(twin.etag, str) and twin.etag
        assert isinstance(twin.version, int)
        for section in (twin.properties.desired, twin.properties.reported):
            assert isinstance(section["$version"], int) and section["$version"] >= 1
            assert {k for k in section if not k.startswith("$")} == set(), section

    twin = rm.get_twin(device_id)
    assert twin.device_id == device_id
    assert twin.module_id is None
    assert twin.tags in ({}, None)
    assert twin.capabilities.iot_edge is True
    assert twin.device_scope == created.device_scope
    assert twin.status == "enabled"
    assert twin.authentication_type == "sas"
    assert twin.device_etag == created.etag


def test_nested_edge_child_by_parent_scopes(hub):
    rm = hub.registry_manager()
    parent = create_edge(rm, unique("parent"))
    child_id = unique("child")
    child = create_edge(rm, child_id, parent_scopes=parent.device_scope)
    assert_new_device(child, child_id, edge=True)
    # The child keeps its own scope and points at the parent's.
    assert child.device_scope != parent.device_scope
    assert child.parent_scopes == [parent.device_scope]
    assert rm.get_device(child_id).as_dict() == child.as_dict()
    assert rm.get_twin(child_id).parent_scopes == [parent.device_scope]
    # The parent is unchanged by getting a child.
    assert rm.get_device(parent.device_id).as_dict() == parent.as_dict()


def test_leaf_child_by_device_scope(hub):
    rm = hub.registry_manager()
    parent = create_edge(rm, unique("gateway"))
    leaf_id = unique("leaf")
    leaf = rm.create_device_with_sas(leaf_id, "", "", "enabled", iot_edge=False, device_scope=parent.device_scope)
    assert_new_device(leaf, leaf_id, edge=False)
    assert leaf.device_scope == parent.device_scope
    # The service copies a leaf's scope into its parentScopes.
    assert leaf.parent_scopes == [parent.device_scope]
    assert rm.get_device(leaf_id).as_dict() == leaf.as_dict()
    # Leaf devices have no system modules.
    assert rm.get_modules(leaf_id) == []


def test_update_with_etags(hub):
    rm = hub.registry_manager()
    device_id = unique("etag")
    created = rm.create_device_with_sas(device_id, "", "", "enabled")
    keys = created.authentication.symmetric_key

    updated = rm.update_device_with_sas(
        device_id, created.etag, keys.primary_key, keys.secondary_key, "disabled", status_reason="maintenance"
    )
    assert updated.device_id == device_id
    assert updated.status == "disabled"
    assert updated.status_reason == "maintenance"
    assert updated.generation_id == created.generation_id
    assert updated.etag != created.etag
    assert updated.authentication.symmetric_key.primary_key == keys.primary_key
    assert updated.authentication.symmetric_key.secondary_key == keys.secondary_key
    assert rm.get_device(device_id).as_dict() == updated.as_dict()

    # The etag read before the update is stale now.
    with pytest.raises(HttpOperationError) as stale:
        rm.update_device_with_sas(device_id, created.etag, keys.primary_key, keys.secondary_key, "enabled")
    assert_sdk_error(stale, 412, "PreconditionFailed")
    assert rm.get_device(device_id).status == "disabled"

    # "*" always matches.
    forced = rm.update_device_with_sas(device_id, "*", keys.primary_key, keys.secondary_key, "enabled")
    assert forced.status == "enabled"
    assert forced.etag not in (created.etag, updated.etag)

    # Creating an existing id is a conflict.
    with pytest.raises(HttpOperationError) as exists:
        rm.create_device_with_sas(device_id, "", "", "enabled")
    assert_sdk_error(exists, 409, "DeviceAlreadyExists")

    # Twins have their own etag and version.
    twin = rm.get_twin(device_id)
    patched = rm.update_twin(device_id, Twin(tags={"site": {"line": 3}}), twin.etag)
    assert patched.tags == {"site": {"line": 3}}
    assert patched.etag != twin.etag
    assert patched.version == twin.version + 1
    with pytest.raises(HttpOperationError) as stale_twin:
        rm.update_twin(device_id, Twin(tags={"site": None}), twin.etag)
    assert_sdk_error(stale_twin, 412, "PreconditionFailed")
    merged = rm.update_twin(device_id, Twin(tags={"site": {"hall": "B"}}), patched.etag)
    assert merged.tags == {"site": {"line": 3, "hall": "B"}}

    # Delete honours the etag too.
    with pytest.raises(HttpOperationError) as stale_delete:
        rm.delete_device(device_id, created.etag)
    assert_sdk_error(stale_delete, 412, "PreconditionFailed")
    assert rm.delete_device(device_id, forced.etag) is None
    with pytest.raises(HttpOperationError) as gone:
        rm.get_device(device_id)
    assert_sdk_error(gone, 404, "DeviceNotFound")


def test_update_of_a_missing_device_is_not_found(hub):
    rm = hub.registry_manager()
    with pytest.raises(HttpOperationError) as missing:
        rm.update_device_with_sas(unique("absent"), "*", "", "", "enabled")
    assert_sdk_error(missing, 404, "DeviceNotFound")


def test_bulk_create_with_partial_failure(hub):
    rm = hub.registry_manager()
    parent = create_edge(rm, unique("bulk-parent"))
    existing = rm.create_device_with_sas(unique("bulk-existing"), "", "", "enabled")
    edge_id, leaf_id = unique("bulk-edge"), unique("bulk-leaf")
    tags = {"edgeHierarchy": {"name": "conformance", "layer": 2}}
    result = rm.bulk_create_or_update_devices([
        ExportImportDevice(
            id=edge_id, import_mode="create", status="enabled",
            authentication=AuthenticationMechanism(type="sas", symmetric_key=SymmetricKey(primary_key="", secondary_key="")),
            capabilities=DeviceCapabilities(iot_edge=True), parent_scopes=[parent.device_scope], tags=tags,
        ),
        ExportImportDevice(
            id=leaf_id, import_mode="create", status="enabled",
            capabilities=DeviceCapabilities(iot_edge=False), device_scope=parent.device_scope,
        ),
        ExportImportDevice(id=existing.device_id, import_mode="create", status="disabled"),
    ])
    assert result.is_successful is False
    assert len(result.errors) == 1, [e.as_dict() for e in result.errors]
    error = result.errors[0]
    assert error.device_id == existing.device_id
    assert error.error_code == "DeviceAlreadyExists"
    assert isinstance(error.error_status, str) and error.error_status
    assert result.warnings in ([], None)

    # The valid entries were applied...
    edge = rm.get_device(edge_id)
    assert_new_device(edge, edge_id, edge=True)
    assert edge.parent_scopes == [parent.device_scope]
    assert rm.get_twin(edge_id).tags == tags
    assert sorted(m.module_id for m in rm.get_modules(edge_id)) == ["$edgeAgent", "$edgeHub"]
    leaf = rm.get_device(leaf_id)
    assert_new_device(leaf, leaf_id, edge=False)
    assert leaf.device_scope == parent.device_scope
    assert leaf.parent_scopes == [parent.device_scope]
    # ...and the failed one left the existing device untouched.
    assert rm.get_device(existing.device_id).as_dict() == existing.as_dict()

    # A fully valid batch succeeds without errors; delete mode removes devices.
    result = rm.bulk_create_or_update_devices([
        ExportImportDevice(id=leaf_id, import_mode="delete"),
        ExportImportDevice(id=existing.device_id, import_mode="delete"),
    ])
    assert result.is_successful is True
    assert result.errors in ([], None)
    for device_id in (leaf_id, existing.device_id):
        with pytest.raises(HttpOperationError) as gone:
            rm.get_device(device_id)
        assert_sdk_error(gone, 404, "DeviceNotFound")


def test_custom_module_identity_and_module_twin_updates(hub):
    rm = hub.registry_manager()
    device_id = unique("modhost")
    create_edge(rm, device_id)
    created = rm.create_module_with_sas(device_id, "sensor", "IotEdge", "", "")
    assert created.module_id == "sensor"
    assert created.device_id == device_id
    assert created.managed_by == "IotEdge"
    assert isinstance(created.generation_id, str) and created.generation_id
    assert created.authentication.type == "sas"
    assert_generated_key(created.authentication.symmetric_key.primary_key)
    assert rm.get_module(device_id, "sensor").as_dict() == created.as_dict()
    assert sorted(m.module_id for m in rm.get_modules(device_id)) == ["$edgeAgent", "$edgeHub", "sensor"]
    with pytest.raises(HttpOperationError) as exists:
        rm.create_module_with_sas(device_id, "sensor", "IotEdge", "", "")
    assert exists.value.response.status_code == 409

    twin = rm.get_module_twin(device_id, "sensor")
    assert twin.module_id == "sensor" and twin.device_id == device_id
    patched = rm.update_module_twin(device_id, "sensor", Twin(properties={"desired": {"SendInterval": 5}}), twin.etag)
    assert patched.properties.desired["SendInterval"] == 5
    assert patched.properties.desired["$version"] == twin.properties.desired["$version"] + 1
    assert patched.etag != twin.etag
    with pytest.raises(HttpOperationError) as stale:
        rm.update_module_twin(device_id, "sensor", Twin(properties={"desired": {"SendInterval": 6}}), twin.etag)
    assert_sdk_error(stale, 412, "PreconditionFailed")

    assert rm.delete_module(device_id, "sensor") is None
    with pytest.raises(HttpOperationError) as gone:
        rm.get_module(device_id, "sensor")
    assert_sdk_error(gone, 404, "ModuleNotFound")


def test_device_listing_and_registry_statistics(hub):
    rm = hub.registry_manager()
    before = rm.get_device_registry_statistics()
    enabled_id, disabled_id = unique("stat-on"), unique("stat-off")
    rm.create_device_with_sas(enabled_id, "", "", "enabled")
    rm.create_device_with_sas(disabled_id, "", "", "disabled")
    after = rm.get_device_registry_statistics()
    assert after.total_device_count == before.total_device_count + 2
    assert after.enabled_device_count == before.enabled_device_count + 1
    assert after.disabled_device_count == before.disabled_device_count + 1
    listed = {d.device_id: d for d in rm.get_devices(1000)}
    assert listed[enabled_id].status == "enabled"
    assert listed[disabled_id].status == "disabled"
    assert len(rm.get_devices(1)) == 1


def test_delete_edge_device_removes_modules_and_twins(hub):
    rm = hub.registry_manager()
    device_id = unique("doomed")
    original = create_edge(rm, device_id)
    assert rm.delete_device(device_id) is None
    with pytest.raises(HttpOperationError) as device:
        rm.get_device(device_id)
    assert_sdk_error(device, 404, "DeviceNotFound")
    with pytest.raises(HttpOperationError) as twin:
        rm.get_twin(device_id)
    assert_sdk_error(twin, 404, "DeviceNotFound")
    with pytest.raises(HttpOperationError) as modules:
        rm.get_module_twin(device_id, "$edgeAgent")
    assert modules.value.response.status_code == 404
    # Deleting again is a 404 as well.
    with pytest.raises(HttpOperationError) as again:
        rm.delete_device(device_id)
    assert_sdk_error(again, 404, "DeviceNotFound")
    # A re-created device is a new identity with a new generation and scope.
    recreated = create_edge(rm, device_id)
    assert_new_device(recreated, device_id, edge=True)
    assert recreated.generation_id != original.generation_id
    assert recreated.device_scope != original.device_scope
