"""Parent rules: accepted leniently like Azure by default, rejected with 400 InvalidDeviceScope
under `--strict`. The same SDK calls run against both; only the expected outcome differs."""

import pytest
from msrest.exceptions import HttpOperationError

from support import assert_sdk_error, unique


def expect_scope_rule(hub, create):
    """Runs `create`; lenient hubs accept it, strict hubs answer 400 InvalidDeviceScope."""
    if hub.strict:
        with pytest.raises(HttpOperationError) as rejected:
            create()
        assert_sdk_error(rejected, 400, "InvalidDeviceScope")
        return None
    return create()


def test_non_edge_parent(hub):
    rm = hub.registry_manager()
    plain = rm.create_device_with_sas(unique("plain"), "", "", "enabled", iot_edge=False)
    fake_scope = f"ms-azure-iot-edge://{plain.device_id}-{plain.generation_id}"
    child_id = unique("orphan")
    child = expect_scope_rule(hub, lambda: rm.create_device_with_sas(
        child_id, "", "", "enabled", iot_edge=True, parent_scopes=[fake_scope]))
    if child is not None:
        assert child.parent_scopes == [fake_scope]
    else:
        with pytest.raises(HttpOperationError) as absent:
            rm.get_device(child_id)
        assert_sdk_error(absent, 404, "DeviceNotFound")


def test_more_than_one_parent_scope(hub):
    rm = hub.registry_manager()
    first = rm.create_device_with_sas(unique("p1"), "", "", "enabled", iot_edge=True)
    second = rm.create_device_with_sas(unique("p2"), "", "", "enabled", iot_edge=True)
    scopes = [first.device_scope, second.device_scope]
    child = expect_scope_rule(hub, lambda: rm.create_device_with_sas(
        unique("twoparents"), "", "", "enabled", iot_edge=True, parent_scopes=scopes))
    if child is not None:
        assert child.parent_scopes == scopes


def test_more_than_five_generations(hub):
    rm = hub.registry_manager()
    top = rm.create_device_with_sas(unique("gen0"), "", "", "enabled", iot_edge=True)
    parent = top
    for generation in range(1, 6):  # five generations below the top are allowed
        parent = rm.create_device_with_sas(unique(f"gen{generation}"), "", "", "enabled",
                                           iot_edge=True, parent_scopes=[parent.device_scope])
        assert parent.parent_scopes is not None and len(parent.parent_scopes) == 1
    sixth = expect_scope_rule(hub, lambda: rm.create_device_with_sas(
        unique("gen6"), "", "", "enabled", iot_edge=True, parent_scopes=[parent.device_scope]))
    if sixth is not None:
        assert sixth.parent_scopes == [parent.device_scope]
