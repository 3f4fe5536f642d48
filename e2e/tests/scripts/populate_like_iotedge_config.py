"""Populates a hub the way iotedge_config_cli does for the tutorial, with Microsoft's own SDK.

Device by device, parents first: an IoT Edge device with symmetric keys the hub generates, a
child linked to its parent's device scope, then the device's deployment JSON applied to it
with applyConfigurationContent. Prints one JSON line: the ids created and their scopes.

Usage: python populate_like_iotedge_config.py CONNECTION_STRING DEPLOYMENTS_DIR
(REQUESTS_CA_BUNDLE must point at the emulator's CA.)
"""

import json
import pathlib
import sys

from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import ConfigurationContent

# The tutorial's tree (iotedge_config.yaml): device, parent, deployment file.
TREE = [
    ("top-layer", None, "deploymentTopLayer.json"),
    ("lower-layer", "top-layer", "deploymentLowerLayer.json"),
]


def main(connection_string: str, deployments: pathlib.Path) -> None:
    registry = IoTHubRegistryManager.from_connection_string(connection_string)
    configurations = IoTHubConfigurationManager.from_connection_string(connection_string)
    scopes = {}
    for device_id, parent, deployment in TREE:
        parent_scopes = [scopes[parent]] if parent else None
        device = registry.create_device_with_sas(
            device_id, "", "", "enabled", iot_edge=True, parent_scopes=parent_scopes
        )
        scopes[device_id] = device.device_scope
        manifest = json.loads((deployments / deployment).read_text())
        configurations.apply_configuration_on_edge_device(
            device_id, ConfigurationContent(modules_content=manifest["modulesContent"])
        )
    print(json.dumps({"created": list(scopes), "scopes": scopes}))


if __name__ == "__main__":
    main(sys.argv[1], pathlib.Path(sys.argv[2]))
