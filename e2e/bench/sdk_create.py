"""Creates a hierarchy the way `az iot edge devices create` does: one device at a time, with
Microsoft's official service SDK (azure-iot-hub), against the IoT Hub emulator.

For each device, parents before children:
  1. create       PUT /devices/{id}                        (create_device_with_sas)
  2. set parent   GET /devices/{parent}, then PUT /devices/{id} with If-Match
                  (the parent's deviceScope goes into parentScopes; a leaf also takes it as
                  its deviceScope), as `az iot hub device-identity parent set` does
  3. set modules  POST /devices/{id}/applyConfigurationContent, then GET /devices/{id}/modules
                  (Edge devices only), as `az iot edge set-modules` does

A 429 is waited out for its Retry-After and retried (the SDK itself does not retry 429s), and
the waits are counted apart from the work.

Step 3 runs for the first --modules-sample Edge devices only; the rest get steps 1 and 2. The
emulator counts applyConfigurationContent against the configuration quota (20 per minute per
unit; Azure's docs do not say either way), so step 3 for every device of a large hierarchy would
take tens of minutes; a sample a little larger than one minute's quota shows the throttle and
its wait. The output says how many devices got
each step, so the caller extrapolates from per-step averages.

Usage: python sdk_create.py --hub-dir DIR --plan PLAN.json --out RESULT.json [--modules-sample N]
PLAN.json: {"devices": [{"id", "parent", "type": "Edge"|"Leaf", "deployment"}],
             "deployments": {"<name>": <modulesContent>}}
"""

import argparse
import json
import os
import pathlib
import sys
import time
from importlib import metadata


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hub-dir", required=True, type=pathlib.Path,
                        help="the emulator's --dir (connection-string and ca.crt)")
    parser.add_argument("--plan", required=True, type=pathlib.Path, help="devices and deployments (JSON)")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="where to write the result (JSON)")
    parser.add_argument("--modules-sample", type=int, default=25,
                        help="how many Edge devices (the first ones) get their modules set")
    return parser.parse_args()


class Throttled(Exception):
    """A 429 answer, with the seconds the hub asked to wait."""

    def __init__(self, retry_after):
        super().__init__(f"throttled, retry after {retry_after}s")
        self.retry_after = retry_after


class Step:
    """Time spent and calls made in one of the three steps."""

    def __init__(self):
        self.devices = 0
        self.work_seconds = 0.0
        self.wait_seconds = 0.0
        self.throttled = 0

    def as_json(self):
        return {"devices": self.devices, "workSeconds": self.work_seconds,
                "waitSeconds": self.wait_seconds, "throttled": self.throttled}


def http_status(error):
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def retry_after_seconds(error):
    response = getattr(error, "response", None)
    value = (getattr(response, "headers", None) or {}).get("Retry-After", "")
    try:
        return max(float(value), 0.1)
    except ValueError:
        return 10.0  # IoT Hub does not always send Retry-After; wait a while, as az users would


def call(step, what, fn):
    """Runs one SDK call; waits out 429s (counted on `step`); any other error ends the run with
    a message naming the device and the call."""
    from msrest.exceptions import HttpOperationError

    while True:
        started = time.perf_counter()
        try:
            result = fn()
            step.work_seconds += time.perf_counter() - started
            return result
        except HttpOperationError as error:
            step.work_seconds += time.perf_counter() - started
            if http_status(error) != 429:
                body = getattr(getattr(error, "response", None), "text", "")[:300]
                raise SystemExit(f"sdk_create: {what} failed with HTTP {http_status(error)}: {body}") from None
            step.throttled += 1
            wait = retry_after_seconds(error)
            step.wait_seconds += wait
            time.sleep(wait)


def main():
    args = parse_args()
    # The SDK trusts what `requests` trusts: point it at the emulator's CA, as the conformance
    # suite does.
    os.environ["REQUESTS_CA_BUNDLE"] = str(args.hub_dir / "ca.crt")
    from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
    from azure.iot.hub.models import ConfigurationContent

    connection_string = (args.hub_dir / "connection-string").read_text().strip()
    registry = IoTHubRegistryManager.from_connection_string(connection_string)
    configurations = IoTHubConfigurationManager.from_connection_string(connection_string)
    plan = json.loads(args.plan.read_text())
    devices, deployments = plan["devices"], plan.get("deployments", {})

    steps = {"create": Step(), "setParent": Step(), "setModules": Step()}
    edge_devices = sum(1 for d in devices if d.get("type", "Edge") == "Edge")
    started = time.perf_counter()
    for device in devices:
        device_id, parent, edge = device["id"], device.get("parent"), device.get("type", "Edge") == "Edge"

        # 1. create: the hub generates the keys and, for an Edge device, its deviceScope.
        created = call(steps["create"], f"creating {device_id}", lambda: registry.create_device_with_sas(
            device_id, "", "", "enabled", iot_edge=edge))
        steps["create"].devices += 1

        # 2. set parent: read the parent's scope, write it into the child with the child's etag.
        if parent:
            step = steps["setParent"]
            parent_scope = call(step, f"reading parent {parent} of {device_id}",
                                lambda: registry.get_device(parent)).device_scope
            keys = created.authentication.symmetric_key
            own_scope = created.device_scope if edge else parent_scope
            call(step, f"setting the parent of {device_id}", lambda: registry.update_device_with_sas(
                device_id, created.etag, keys.primary_key, keys.secondary_key, "enabled",
                iot_edge=edge, device_scope=own_scope, parent_scopes=[parent_scope]))
            step.devices += 1

        # 3. set modules: the device's deployment manifest, applied to this device alone.
        if edge and device.get("deployment") and steps["setModules"].devices < args.modules_sample:
            step = steps["setModules"]
            content = ConfigurationContent(modules_content=deployments[device["deployment"]])
            call(step, f"applying modules to {device_id}",
                 lambda: configurations.apply_configuration_on_edge_device(device_id, content))
            call(step, f"listing the modules of {device_id}", lambda: registry.get_modules(device_id))
            step.devices += 1

    result = {
        "sdk": f"azure-iot-hub {metadata.version('azure-iot-hub')}",
        "devices": len(devices),
        "edgeDevices": edge_devices,
        "withParent": sum(1 for d in devices if d.get("parent")),
        "elapsedSeconds": time.perf_counter() - started,
        "modulesSample": args.modules_sample,
        "steps": {name: step.as_json() for name, step in steps.items()},
    }
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
