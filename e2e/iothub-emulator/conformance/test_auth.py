"""Authentication and api-version checks with raw HTTPS requests.

Every negative case differs from a token that works in exactly one respect, and the working
token is checked first, so a failure cannot come from anything but the change under test.
"""

import base64
import os
import time
import urllib.parse

from support import assert_hub_error, sas_token, unique


def missing_device_path():
    return f"/devices/{unique('nobody')}"


def test_valid_owner_token_reaches_the_registry(hub):
    # A correctly signed request for a missing device is a 404, not an auth error.
    response = hub.request("GET", missing_device_path())
    assert_hub_error(response, 404, "DeviceNotFound", 404001)


def test_wrong_key_is_unauthorized(hub):
    owner = hub.owner
    wrong_key = base64.b64encode(os.urandom(32)).decode()
    token = sas_token(owner.host, wrong_key, owner.name)
    assert_hub_error(hub.request("GET", missing_device_path(), token=token), 401, "IotHubUnauthorizedAccess", 401002)


def test_unknown_policy_name_is_unauthorized(hub):
    owner = hub.owner
    token = sas_token(owner.host, owner.key, "noSuchPolicy")
    assert_hub_error(hub.request("GET", missing_device_path(), token=token), 401, "IotHubUnauthorizedAccess", 401002)


def test_expired_token_is_unauthorized_beyond_five_minutes_of_skew(hub):
    owner = hub.owner
    now = time.time()
    expired = sas_token(owner.host, owner.key, owner.name, expiry=now - 3600)
    assert_hub_error(hub.request("GET", missing_device_path(), token=expired), 401, "IotHubUnauthorizedAccess", 401002)
    # IoT Hub allows five minutes of clock skew: a token expired one minute ago still works.
    within_skew = sas_token(owner.host, owner.key, owner.name, expiry=now - 60)
    assert_hub_error(hub.request("GET", missing_device_path(), token=within_skew), 404, "DeviceNotFound", 404001)


def test_tampered_resource_uri_is_unauthorized(hub):
    owner = hub.owner
    signed_sr = urllib.parse.quote_plus(owner.host)
    # The signature covers the bare host; the token claims a different resource.
    tampered = sas_token(owner.host, owner.key, owner.name, signed_sr=signed_sr,
                         presented_sr=urllib.parse.quote_plus(owner.host + "/devices/other"))
    assert_hub_error(hub.request("GET", missing_device_path(), token=tampered), 401, "IotHubUnauthorizedAccess", 401002)
    # A token correctly signed, but for another hub, is not valid here either.
    other_hub = sas_token("another-hub.azure-devices.net", owner.key, owner.name)
    assert_hub_error(hub.request("GET", missing_device_path(), token=other_hub), 401, "IotHubUnauthorizedAccess", 401002)


def test_missing_or_malformed_authorization_is_unauthorized(hub):
    assert_hub_error(hub.request("GET", missing_device_path(), token=False), 401, "IotHubUnauthorizedAccess", 401002)
    assert_hub_error(hub.request("GET", missing_device_path(), token="Bearer abc"), 401, "IotHubUnauthorizedAccess", 401002)


def test_registry_read_policy_cannot_write(hub):
    reader = hub.policy("registryRead")
    device_id = unique("ro")
    # The key itself is valid: reading works.
    assert_hub_error(hub.request("GET", f"/devices/{device_id}", policy=reader), 404, "DeviceNotFound", 404001)
    body = {"deviceId": device_id, "status": "enabled", "capabilities": {"iotEdge": False},
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}}
    denied = hub.request("PUT", f"/devices/{device_id}", policy=reader, json=body)
    assert_hub_error(denied, 401, "IotHubUnauthorizedAccess", 401002)
    # Nothing was written.
    assert_hub_error(hub.request("GET", f"/devices/{device_id}"), 404, "DeviceNotFound", 404001)
    # The same request with a read-write policy succeeds and answers 200 (not 201).
    writer = hub.policy("registryReadWrite")
    created = hub.request("PUT", f"/devices/{device_id}", policy=writer, json=body)
    assert created.status_code == 200, created.text
    assert created.json()["deviceId"] == device_id


def test_unknown_api_version_is_rejected(hub):
    response = hub.request("GET", missing_device_path(), api_version="2019-01-01")
    assert_hub_error(response, 400, "InvalidProtocolVersion", 400001)
    # The three versions clients use in the wild are accepted.
    for version in ("2020-03-13", "2021-04-12", "2024-03-31"):
        ok = hub.request("GET", missing_device_path(), api_version=version)
        assert_hub_error(ok, 404, "DeviceNotFound", 404001)
