"""Throttling of an S1 hub with one unit: 100 identity-registry operations per minute.

Raw requests, not the SDK: msrest retries 429 responses (honouring Retry-After), which would hide
the throttle this test must see.
"""

from support import assert_hub_error, unique

DEVICE_BODY = {"status": "enabled", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}}


def test_101st_registry_operation_in_a_minute_is_throttled(s1_hub):
    run = unique("quota")
    for n in range(100):
        device_id = f"{run}-{n}"
        response = s1_hub.request("PUT", f"/devices/{device_id}", json={"deviceId": device_id, **DEVICE_BODY})
        assert response.status_code == 200, f"registry operation {n + 1} of 100: {response.status_code} {response.text}"

    throttled = s1_hub.request("GET", f"/devices/{run}-0")
    assert_hub_error(throttled, 429, "ThrottlingException", 429001)
    retry_after = throttled.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit(), f"Retry-After: {retry_after!r}"
    assert 1 <= int(retry_after) <= 60, f"Retry-After {retry_after}s is outside one minute"

    # Quotas are per operation class: twin reads are still allowed.
    twin = s1_hub.request("GET", f"/twins/{run}-0")
    assert twin.status_code == 200, twin.text
    assert twin.json()["deviceId"] == f"{run}-0"

    # The emulator's own counters agree: 100 registry units taken, one request throttled.
    stats = s1_hub.request("GET", "/_emulator/stats", api_version=None)
    assert stats.status_code == 200, stats.text
    assert stats.json()["registryOperations"] == 100
    assert stats.json()["throttled"] == 1


def test_bulk_create_counts_every_device_against_the_registry_quota(s1_hub):
    """Microsoft's own example: on one S1 unit two bulk creates of 50 devices pass in a minute
    and a third is rejected."""
    run = unique("bulkquota")
    for batch in range(3):
        devices = [
            {"id": f"{run}-{batch}-{n}", "importMode": "create", "status": "enabled"}
            for n in range(50)
        ]
        response = s1_hub.request("POST", "/devices", json=devices)
        if batch < 2:
            assert response.status_code == 200, f"bulk {batch + 1}: {response.status_code} {response.text[:300]}"
            assert response.json()["isSuccessful"] is True
        else:
            assert_hub_error(response, 429, "ThrottlingException", 429001)
            assert response.headers.get("Retry-After", "").isdigit()
    # The rejected batch created nothing.
    missing = s1_hub.request("GET", f"/twins/{run}-2-0")
    assert_hub_error(missing, 404, "DeviceNotFound", 404001)
