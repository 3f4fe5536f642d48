//! The `config.toml` template of `template_config_path` / `templateConfigPath`: which of its
//! settings the operator's bundles cannot carry over.
//!
//! Both tools render each device's config.toml from this template, overwriting the device's own
//! settings (hostnames, provisioning, edge CA, agent image). The operator writes config.toml
//! itself (`bundle::config_toml`) and has no template, so every other setting that differs from
//! what it writes is a customisation lost in the move; the import names each one.

/// Settings the tools overwrite per device from the config (and the operator writes itself).
const OVERWRITTEN: [&str; 7] = [
    "hostname",
    "parent_hostname",
    "trust_bundle_cert",
    "provisioning",
    "edge_ca.cert",
    "edge_ca.pk",
    "agent.config.image",
];

/// Settings the operator writes with exactly these values (the tools' default template has them
/// too); `auto_reprovisioning_mode = "Dynamic"` is aziot-edge's default, which the operator keeps
/// by leaving it out.
const SAME_AS_OPERATOR: [(&str, &str); 9] = [
    ("agent.name", "edgeAgent"),
    ("agent.type", "docker"),
    (
        "connect.workload_uri",
        "unix:///var/run/iotedge/workload.sock",
    ),
    (
        "connect.management_uri",
        "unix:///var/run/iotedge/mgmt.sock",
    ),
    ("listen.workload_uri", "fd://aziot-edged.workload.socket"),
    ("listen.management_uri", "fd://aziot-edged.mgmt.socket"),
    ("moby_runtime.uri", "unix:///var/run/docker.sock"),
    ("moby_runtime.network", "azure-iot-edge"),
    ("auto_reprovisioning_mode", "Dynamic"),
];

/// The dotted keys of the template's settings that are not carried over, sorted. Values are
/// never returned: a template may hold keys or passwords.
pub(crate) fn customisations(text: &str) -> Result<Vec<String>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let message = e.message().to_string();
        match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("{message} (line {line})")
            }
            None => message,
        }
    })?;
    let mut out = Vec::new();
    walk(&table, "", &mut out);
    Ok(out)
}

fn walk(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if OVERWRITTEN
            .iter()
            .any(|o| path == *o || path.starts_with(&format!("{o}.")))
        {
            continue;
        }
        match value {
            toml::Value::Table(inner) => walk(inner, &path, out),
            toml::Value::String(s)
                if SAME_AS_OPERATOR.iter().any(|(k, v)| *k == path && v == s) => {}
            _ => out.push(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tools_default_template_has_no_customisations() {
        let text = r#"
hostname = ""
parent_hostname = ""
trust_bundle_cert = ""
auto_reprovisioning_mode = "Dynamic"

[provisioning]
source = "manual"
iothub_hostname = ""
device_id = ""

[provisioning.authentication]
method = "sas"
device_id_pk = { value = "" }
trust_bundle_cert = ""

[edge_ca]
cert = "file:///"
pk = "file:///"

[agent]
name = "edgeAgent"
type = "docker"

[agent.config]
image = ""

[connect]
workload_uri = "unix:///var/run/iotedge/workload.sock"
management_uri = "unix:///var/run/iotedge/mgmt.sock"

[listen]
workload_uri = "fd://aziot-edged.workload.socket"
management_uri = "fd://aziot-edged.mgmt.socket"

[moby_runtime]
uri = "unix:///var/run/docker.sock"
network = "azure-iot-edge"
"#;
        assert_eq!(customisations(text), Ok(vec![]));
    }

    #[test]
    fn other_settings_and_other_values_are_named() {
        let text = r#"
hostname = "x"
[agent]
name = "edgeAgent"
type = "docker"
imagePullPolicy = "never"
[agent.env]
RuntimeLogLevel = "debug"
[moby_runtime]
network = "my-net"
[edge_ca.auto_renew]
threshold = "80%"
"#;
        assert_eq!(
            customisations(text).unwrap(),
            vec![
                "agent.env.RuntimeLogLevel",
                "agent.imagePullPolicy",
                "edge_ca.auto_renew.threshold",
                "moby_runtime.network",
            ]
        );
    }

    #[test]
    fn a_broken_template_says_where() {
        let err = customisations("[agent\nname = 1\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }
}
