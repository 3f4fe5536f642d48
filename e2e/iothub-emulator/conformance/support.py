"""Helpers shared by the conformance tests: connection strings, SAS tokens, raw HTTP, error checks.

The raw-HTTP helpers build SAS tokens exactly as the official Python SDK does
(`azure.iot.hub.sastoken`: `sr` = quote_plus(host), HMAC-SHA256 over `sr + "\\n" + se`, `sig`
URL-quoted), so a test can change one thing (key, expiry, `sr`, policy) and nothing else.
"""

import base64
import hashlib
import hmac
import json
import pathlib
import time
import urllib.parse
import uuid

import requests

API_VERSION = "2021-04-12"


def parse_connection_string(text: str) -> dict:
    """`HostName=..;SharedAccessKeyName=..;SharedAccessKey=..` into a dict (split on the first `=`)."""
    fields = {}
    for part in text.strip().split(";"):
        if part:
            key, _, value = part.partition("=")
            fields[key] = value
    missing = {"HostName", "SharedAccessKeyName", "SharedAccessKey"} - fields.keys()
    if missing:
        raise ValueError(f"connection string lacks {sorted(missing)}")
    return fields


class Policy:
    """One shared access policy: its name, key and connection string."""

    def __init__(self, connection_string: str):
        self.connection_string = connection_string.strip()
        fields = parse_connection_string(self.connection_string)
        self.host = fields["HostName"]
        self.name = fields["SharedAccessKeyName"]
        self.key = fields["SharedAccessKey"]

    def __repr__(self):  # never print the key
        return f"Policy({self.name}@{self.host})"


class Hub:
    """A running emulator as the tests see it."""

    def __init__(self, state_dir: pathlib.Path, owner: Policy, policies: dict, args):
        self.state_dir = state_dir
        self.owner = owner
        self.policies = policies
        self.args = list(args)
        self.strict = "--strict" in self.args
        self.ca_path = state_dir / "ca.crt"
        self.base_url = "https://" + owner.host
        self.logs = lambda: ""

    @classmethod
    def from_state_dir(cls, state_dir: pathlib.Path, args):
        owner = Policy((state_dir / "connection-string").read_text())
        if not (state_dir / "ca.crt").is_file():
            raise FileNotFoundError(f"{state_dir / 'ca.crt'} was not written")
        policies = {owner.name: owner}
        extra = state_dir / "connection-strings.json"
        if extra.is_file():
            data = json.loads(extra.read_text())
            # Accept {"policy": "HostName=..."} or [{"name": .., "connectionString": ..}].
            items = data.items() if isinstance(data, dict) else (
                (item.get("name") or item.get("keyName"), item.get("connectionString")) for item in data
            )
            for name, conn in items:
                if isinstance(conn, dict):
                    conn = conn.get("connectionString")
                if conn and parse_connection_string(conn).get("HostName"):
                    policy = Policy(conn)
                    policies[policy.name] = policy
        return cls(state_dir, owner, policies, args)

    @property
    def connection_string(self) -> str:
        return self.owner.connection_string

    def policy(self, name: str) -> Policy:
        if name not in self.policies:
            raise AssertionError(
                f"the emulator in {self.state_dir} publishes no '{name}' policy "
                f"(found {sorted(self.policies)}); expected it in connection-strings.json"
            )
        return self.policies[name]

    def registry_manager(self):
        from azure.iot.hub import IoTHubRegistryManager

        return IoTHubRegistryManager.from_connection_string(self.connection_string)

    def configuration_manager(self):
        from azure.iot.hub import IoTHubConfigurationManager

        return IoTHubConfigurationManager.from_connection_string(self.connection_string)

    def request(self, method, path, *, policy=None, token=None, api_version=API_VERSION,
                headers=None, **kwargs) -> requests.Response:
        """One raw HTTPS request; signs with `policy` (default owner) unless `token` is given."""
        signer = policy or self.owner
        all_headers = {"Authorization": token if token is not None else sas_token(signer.host, signer.key, signer.name)}
        if token is False:
            all_headers.pop("Authorization")
        all_headers.update(headers or {})
        params = kwargs.pop("params", {})
        if api_version is not None:
            params = {"api-version": api_version, **params}
        return requests.request(method, self.base_url + path, headers=all_headers, params=params,
                                verify=str(self.ca_path), timeout=30, **kwargs)


def sas_token(host: str, key_b64: str, policy: str, *, expiry=None, ttl=3600, signed_sr=None,
              presented_sr=None) -> str:
    """A service SAS token built as azure-iot-hub builds it.

    `signed_sr` is what the signature covers and `presented_sr` what the token claims; both default
    to quote_plus(host). Giving them different values makes a tampered token.
    """
    se = str(int(expiry if expiry is not None else time.time() + ttl))
    signed = signed_sr if signed_sr is not None else urllib.parse.quote_plus(host)
    presented = presented_sr if presented_sr is not None else signed
    digest = hmac.new(base64.b64decode(key_b64), f"{signed}\n{se}".encode(), hashlib.sha256).digest()
    sig = urllib.parse.quote(base64.b64encode(digest))
    return f"SharedAccessSignature sr={presented}&sig={sig}&se={se}&skn={policy}"


def unique(prefix: str) -> str:
    """A device/configuration id unique to this test run (lower-case, as configuration ids must be)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_hub_error(response, status: int, name: str, number: int):
    """IoT Hub's error contract: the status, the `iothub-errorcode` header and a JSON body whose
    `Message` is either `ErrorCode:<name>;<text>` or the numeric form `{"errorCode": <number>, ..}`."""
    assert response.status_code == status, (
        f"expected HTTP {status} {name}, got {response.status_code}: {response.text[:500]}"
    )
    assert response.headers.get("iothub-errorcode") == name, (
        f"iothub-errorcode header: expected {name!r}, got {response.headers.get('iothub-errorcode')!r}"
    )
    body = response.json()
    message = body.get("Message")
    assert isinstance(message, str), f"error body has no string Message: {body}"
    if message.startswith("ErrorCode:"):
        assert message.startswith(f"ErrorCode:{name};"), f"Message names the wrong code: {message}"
    else:
        inner = json.loads(message)
        assert inner.get("errorCode") == number, f"Message errorCode: expected {number}: {message}"
        assert inner.get("trackingId"), f"numeric error body without trackingId: {message}"
    assert "ExceptionMessage" in body, f"error body without ExceptionMessage: {body}"


# Numeric codes of the errors the suite expects (Microsoft's IoT Hub error troubleshooting pages).
ERROR_NUMBERS = {
    "InvalidProtocolVersion": 400001,
    "ArgumentInvalid": 400004,
    "InvalidDeviceScope": 400028,
    "InvalidConfigurationContent": 400402,
    "CannotModifyImmutableConfigurationContent": 400403,
    "IotHubUnauthorizedAccess": 401002,
    "IotHubQuotaExceeded": 403002,
    "DeviceNotFound": 404001,
    "ModuleNotFound": 404010,
    "ConfigurationNotFound": 404301,
    "DeviceAlreadyExists": 409001,
    "ConfigurationAlreadyExists": 409401,
    "PreconditionFailed": 412001,
    "ConfigurationCountLimitExceeded": 413101,
    "ThrottlingException": 429001,
}


def assert_sdk_error(excinfo, status: int, name: str):
    """An HttpOperationError raised by the SDK carries the hub's status, header and error body."""
    response = excinfo.value.response
    assert response is not None, "the SDK error carries no HTTP response"
    assert_hub_error(response, status, name, ERROR_NUMBERS[name])


def wait_until(probe, timeout=15.0, interval=0.2):
    """Calls `probe` until it returns something truthy (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout} s")
        time.sleep(interval)


def stats(hub) -> dict:
    """The emulator's own counters (`GET /_emulator/stats`)."""
    response = hub.request("GET", "/_emulator/stats", api_version=None)
    assert response.status_code == 200, response.text
    return response.json()
