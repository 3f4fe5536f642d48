//! The config of `az iot edge devices create --cfg` (azure-iot-cli-extension, configVersion 1.0;
//! its `sample_devices_config.yaml` and the JSON schema in `edge_device_config.py`): camelCase
//! keys, YAML or JSON, a list of root devices under `edgeDevices`, children under `children`,
//! `edgeConfiguration` with `templateConfigPath` and `defaultEdgeAgent`.
//!
//! The hub's name is not in the file (it is the command's `--hub-name`), so the hierarchy is
//! named after the file.

use serde::Deserialize;

use super::iotedge_config::root_ca_paths;
use super::parse::{
    ContainerLogin, Device, Keys, Parsed, Source, authentication, check_version, present,
};
use super::{Format, ImportErrors};

pub(crate) const KEYS: Keys = Keys {
    device_id: "deviceId",
    deployment: "deployment",
    edge_agent: "edgeAgent",
    hostname: "hostname",
    children: "children",
    container_auth: "containerAuth",
    authentication: "iotHub.authenticationMethod",
    config_version: "configVersion",
    hub_name: "iotHub.name",
    certificates: "certificates",
    root_cert: "certificates.rootCACertPath",
    root_key: "certificates.rootCACertKeyPath",
    template: "edgeConfiguration.templateConfigPath",
    default_agent: "edgeConfiguration.defaultEdgeAgent",
    known: &[
        "configVersion",
        "iotHub",
        "authenticationMethod",
        "certificates",
        "rootCACertPath",
        "rootCACertKeyPath",
        "edgeConfiguration",
        "templateConfigPath",
        "defaultEdgeAgent",
        "edgeDevices",
        "deviceId",
        "hostname",
        "edgeAgent",
        "deployment",
        "containerAuth",
        "serverAddress",
        "username",
        "password",
        "children",
    ],
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    config_version: String,
    iot_hub: Hub,
    #[serde(default)]
    certificates: Option<Certificates>,
    #[serde(default)]
    edge_configuration: Option<EdgeConfiguration>,
    #[serde(default)]
    edge_devices: Option<Vec<AzDevice>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Hub {
    authentication_method: String,
}

#[derive(Deserialize)]
struct Certificates {
    #[serde(rename = "rootCACertPath", default)]
    root_ca_cert_path: Option<String>,
    #[serde(rename = "rootCACertKeyPath", default)]
    root_ca_cert_key_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EdgeConfiguration {
    #[serde(default)]
    template_config_path: Option<String>,
    #[serde(default)]
    default_edge_agent: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzDevice {
    device_id: String,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    edge_agent: Option<String>,
    #[serde(default)]
    deployment: Option<String>,
    #[serde(default)]
    container_auth: Option<ContainerAuth>,
    #[serde(default)]
    children: Option<Vec<AzDevice>>,
}

/// Registry credentials for the bootstrap edgeAgent pull; the values are never kept.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct ContainerAuth {
    #[serde(default)]
    server_address: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

fn device(d: AzDevice, path: String) -> Device {
    let children = d
        .children
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, c)| device(c, format!("{path}.children[{i}]")))
        .collect();
    Device {
        path,
        id: d.device_id,
        hostname: present(d.hostname),
        edge_agent: present(d.edge_agent),
        deployment: present(d.deployment),
        container_auth: d.container_auth.map(|a| ContainerLogin {
            server_address: present(a.server_address),
            username: present(a.username),
            has_password: present(a.password).is_some(),
        }),
        children,
    }
}

pub(crate) fn parse(source: &Source) -> Result<Parsed, ImportErrors> {
    let (config, unknown): (Config, _) = source.deserialize()?;
    check_version(
        source,
        &KEYS,
        &config.config_version,
        "`az iot edge devices create`",
    )?;
    let authentication = authentication(
        source,
        &KEYS,
        &config.iot_hub.authentication_method,
        ["symmetricKey", "x509Certificate"],
    )?;
    let root_ca = match config.certificates {
        None => None,
        Some(c) => Some(root_ca_paths(
            source,
            &KEYS,
            present(c.root_ca_cert_path),
            present(c.root_ca_cert_key_path),
        )?),
    };
    let (template, default_agent) = match config.edge_configuration {
        Some(c) => (
            present(c.template_config_path),
            present(c.default_edge_agent),
        ),
        None => (None, None),
    };
    let roots = config
        .edge_devices
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, d)| device(d, format!("edgeDevices[{i}]")))
        .collect();
    Ok(Parsed {
        format: Format::AzDevicesConfig,
        keys: &KEYS,
        hub_name: None,
        authentication,
        root_ca,
        template,
        default_agent,
        roots,
        unknown,
    })
}
