//! The tutorial tool's `iotedge_config.yaml` (`Azure-Samples/iotedge_config_cli`, config_version
//! 1.0): snake_case keys, one root device under `edgedevices` (a list is accepted too, as the
//! tool's unmerged leaf branch writes it), children under `child`.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};

use super::parse::{
    ContainerLogin, Device, Keys, Parsed, Source, authentication, check_version, present,
};
use super::{Format, ImportErrors};

pub(crate) const KEYS: Keys = Keys {
    device_id: "device_id",
    deployment: "deployment",
    edge_agent: "edge_agent",
    hostname: "hostname",
    children: "child",
    container_auth: "container_auth",
    authentication: "iothub.authentication_method",
    config_version: "config_version",
    hub_name: "iothub.iothub_name",
    certificates: "certificates",
    root_cert: "certificates.root_ca_cert_path",
    root_key: "certificates.root_ca_cert_key_path",
    template: "configuration.template_config_path",
    default_agent: "configuration.default_edge_agent",
    known: &[
        "config_version",
        "iothub",
        "iothub_hostname",
        "iothub_name",
        "authentication_method",
        "certificates",
        "root_ca_cert_path",
        "root_ca_cert_key_path",
        "configuration",
        "template_config_path",
        "default_edge_agent",
        "edgedevices",
        "device_id",
        "deployment",
        "hostname",
        "edge_agent",
        "container_auth",
        "serveraddress",
        "username",
        "password",
        "child",
    ],
};

#[derive(Deserialize)]
struct Config {
    config_version: String,
    iothub: Hub,
    #[serde(default)]
    certificates: Option<Certificates>,
    #[serde(default)]
    configuration: Option<Configuration>,
    #[serde(deserialize_with = "one_or_many")]
    edgedevices: Vec<ToolDevice>,
}

#[derive(Deserialize)]
struct Hub {
    #[serde(default)]
    #[allow(dead_code)]
    iothub_hostname: Option<String>,
    #[serde(default)]
    iothub_name: Option<String>,
    authentication_method: String,
}

#[derive(Deserialize)]
struct Certificates {
    root_ca_cert_path: Option<String>,
    root_ca_cert_key_path: Option<String>,
}

#[derive(Deserialize)]
struct Configuration {
    #[serde(default)]
    template_config_path: Option<String>,
    #[serde(default)]
    default_edge_agent: Option<String>,
}

#[derive(Deserialize)]
struct ToolDevice {
    device_id: String,
    #[serde(default)]
    deployment: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    edge_agent: Option<String>,
    #[serde(default)]
    container_auth: Option<ContainerAuth>,
    #[serde(default)]
    child: Option<Vec<ToolDevice>>,
}

/// Registry credentials for the bootstrap edgeAgent pull. Read so that their keys are known
/// (an `IgnoredAny` would count as unknown); the values are dropped at once.
#[derive(Deserialize)]
#[allow(dead_code)]
struct ContainerAuth {
    #[serde(default)]
    serveraddress: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `edgedevices` is one device map in the tool; a list of them is read as several roots.
fn one_or_many<'de, D: de::Deserializer<'de>>(d: D) -> Result<Vec<ToolDevice>, D::Error> {
    struct OneOrMany;
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<ToolDevice>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a device (a mapping with device_id) or a list of devices")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Ok(vec![ToolDevice::deserialize(
                de::value::MapAccessDeserializer::new(map),
            )?])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::deserialize(de::value::SeqAccessDeserializer::new(seq))
        }
    }
    d.deserialize_any(OneOrMany)
}

fn device(d: ToolDevice, path: String) -> Device {
    let children = d
        .child
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, c)| device(c, format!("{path}.child[{i}]")))
        .collect();
    Device {
        path,
        id: d.device_id,
        hostname: present(d.hostname),
        edge_agent: present(d.edge_agent),
        deployment: present(d.deployment),
        container_auth: d.container_auth.map(|a| ContainerLogin {
            server_address: present(a.serveraddress),
            username: present(a.username),
            has_password: present(a.password).is_some(),
        }),
        children,
    }
}

pub(crate) fn parse(source: &Source) -> Result<Parsed, ImportErrors> {
    let (config, unknown): (Config, _) = source.deserialize()?;
    check_version(source, &KEYS, &config.config_version, "iotedge_config_cli")?;
    let authentication = authentication(
        source,
        &KEYS,
        &config.iothub.authentication_method,
        ["symmetric_key", "x509_certificate"],
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
    let (template, default_agent) = match config.configuration {
        Some(c) => (
            present(c.template_config_path),
            present(c.default_edge_agent),
        ),
        None => (None, None),
    };
    let single = config.edgedevices.len() == 1;
    let roots = config
        .edgedevices
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let path = if single {
                "edgedevices".to_string()
            } else {
                format!("edgedevices[{i}]")
            };
            device(d, path)
        })
        .collect();
    Ok(Parsed {
        format: Format::IotedgeConfig,
        keys: &KEYS,
        hub_name: present(config.iothub.iothub_name),
        authentication,
        root_ca,
        template,
        default_agent,
        roots,
        unknown,
    })
}

/// Both paths of a certificates section, or an error naming the missing one.
pub(crate) fn root_ca_paths(
    source: &Source,
    keys: &Keys,
    cert: Option<String>,
    key: Option<String>,
) -> Result<(String, String), ImportErrors> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok((c, k)),
        (c, _) => {
            let missing = if c.is_none() {
                keys.root_cert
            } else {
                keys.root_key
            };
            Err(source.fail(
                keys.certificates,
                None,
                format!("{missing} is missing or empty"),
                format!(
                    "give both {} and {} (PEM files, the key unencrypted), or remove the certificates section to let the \
                     operator generate a root CA",
                    keys.root_cert, keys.root_key
                ),
            ))
        }
    }
}
