//! The multi-document YAML of an [`Import`]: the EdgeHierarchy first, then one ConfigMap per
//! deployment, with comments saying where each came from and which Secrets to create first.
//!
//! Settings equal to the operator's defaults are left out, so the file says only what the config
//! said and diffs stay small in Git. Secrets are not written as manifests: the connection string
//! and the root CA's private key do not belong in a file meant for Git, nor on a terminal; the
//! comments carry the `kubectl create secret` commands instead.

use serde_yaml::{Mapping, Value};

use super::{CONNECTION_STRING_KEY, CONNECTION_STRING_SECRET, DeploymentConfigMap, Format, Import};
use crate::api::{CertificatesSpec, EdgeRuntimeSpec, PolicySpec};
use crate::names::root_ca_secret_name;

/// Width comment paragraphs are wrapped to.
const WIDTH: usize = 100;

/// Text safe inside a `#` comment line: no line breaks or other control characters.
fn comment_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A paragraph as `# ` comment lines wrapped at [`WIDTH`].
fn paragraph(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in comment_safe(text).split_whitespace() {
        if line.len() + 1 + word.len() > WIDTH && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

/// A command as one comment line, indented so it reads as something to run.
fn command(out: &mut String, text: &str) {
    out.push_str("#   ");
    out.push_str(&comment_safe(text));
    out.push('\n');
}

/// `text` quoted for a POSIX shell.
pub(crate) fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The whole output: documents separated by `---`.
pub fn render(import: &Import) -> String {
    let name = import.hierarchy.metadata.name.clone().unwrap_or_default();
    let ns = import
        .hierarchy
        .metadata
        .namespace
        .as_deref()
        .map(|n| format!(" -n {}", shell_quote(n)))
        .unwrap_or_default();
    let mut out = String::new();
    paragraph(
        &mut out,
        &format!(
            "EdgeHierarchy {name} converted by `edge-hierarchy-operator import` from {} ({}). Review it, then \
             `kubectl apply{} -f` this file or commit it to Git.",
            import.source,
            import.format,
            if ns.is_empty() { " -n NAMESPACE" } else { &ns }
        ),
    );
    out.push_str("#\n");
    paragraph(
        &mut out,
        &format!(
            "The operator reads the hub's service connection string from Secret {CONNECTION_STRING_SECRET} (key \
             {CONNECTION_STRING_KEY}) in the same namespace; create it first, from a policy with registry read/write \
             and service connect permissions (iothubowner has them):"
        ),
    );
    let hub = import
        .hub_name
        .as_deref()
        .map(shell_quote)
        .unwrap_or_else(|| "HUB_NAME".into());
    command(
        &mut out,
        &format!(
            "kubectl create secret generic {CONNECTION_STRING_SECRET}{ns} --from-literal={CONNECTION_STRING_KEY}=\"$(az iot hub \
             connection-string show --hub-name {hub} --policy-name iothubowner --key-type primary --query \
             connectionString --output tsv)\""
        ),
    );
    out.push_str("#\n");
    root_ca_comment(import, &name, &ns, &mut out);
    out.push_str("#\n");
    adoption_comment(import, &name, &ns, &mut out);
    if let Some(login) = &import.agent_login {
        out.push_str("#\n");
        paragraph(
            &mut out,
            &format!(
                "Registry login for the edgeAgent pull (the config's container_auth): spec.edge.agentAuth reads it \
                 from Secret {}; create it first, with the password from {} (it is not copied here):",
                login.secret, login.password_field
            ),
        );
        command(
            &mut out,
            &format!(
                "kubectl create secret generic {}{ns} --from-literal=username={} --from-literal=password=\"$PASSWORD\"",
                shell_quote(&login.secret),
                shell_quote(&login.username)
            ),
        );
    }
    for note in &import.notes {
        out.push_str("#\n");
        paragraph(&mut out, note);
    }
    out.push_str(&hierarchy_yaml(import));
    for cm in &import.config_maps {
        out.push_str("---\n");
        paragraph(
            &mut out,
            &format!(
                "Deployment {:?} (devices {}) from {}. After editing the file, regenerate this ConfigMap with:",
                cm.deployment,
                cm.devices.join(", "),
                cm.source
            ),
        );
        command(
            &mut out,
            &format!(
                "kubectl create configmap {}{ns} --from-file={}={} --dry-run=client -o yaml",
                cm.name,
                cm.key,
                shell_quote(&cm.source)
            ),
        );
        out.push_str(&config_map_yaml(cm, import));
    }
    out
}

/// What to do about the root CA: create its Secret from the files, or let the operator generate one.
fn root_ca_comment(import: &Import, name: &str, ns: &str, out: &mut String) {
    match &import.root_ca {
        Some(root) => {
            paragraph(
                out,
                &format!(
                    "Root CA: the operator signs every device's edge CA with the root the config names. Its private \
                     key is not written here; create the kubernetes.io/tls Secret {} from the files (paths as seen \
                     from where the import ran):",
                    root.secret_name
                ),
            );
            command(
                out,
                &format!(
                    "kubectl create secret tls {}{ns} --cert={} --key={}",
                    root.secret_name,
                    shell_quote(&root.cert),
                    shell_quote(&root.key)
                ),
            );
        }
        None => paragraph(
            out,
            &format!(
                "Root CA: the config names none, so the operator generates one once into Secret {}. Devices set up by \
                 the tool trust the tool's root and need their new bundle.",
                root_ca_secret_name(name)
            ),
        ),
    }
}

/// What happens to devices the tool already created.
fn adoption_comment(import: &Import, name: &str, ns: &str, out: &mut String) {
    if import.hierarchy.spec.policy.adopt_existing {
        paragraph(
            out,
            &format!(
                "adoptExisting: devices the {} already created in the hub under these ids are taken over, not \
                 re-created. The operator issues new edge CAs (and, with X509, identity certificates), so install \
                 each device's new bundle on it:",
                tool_name(import.format)
            ),
        );
        command(
            out,
            &format!(
                "kubectl edgehierarchy bundle {name} DEVICE{} -o DEVICE.zip   # then on the device: sudo bash ./install.sh",
                if ns.is_empty() { " -n NAMESPACE" } else { ns }
            ),
        );
    } else {
        paragraph(
            out,
            &format!(
                "Devices the {} already created in the hub show as Conflict and are left untouched; import with \
                 --adopt to take them over instead.",
                tool_name(import.format)
            ),
        );
    }
}

fn tool_name(format: Format) -> &'static str {
    match format {
        Format::IotedgeConfig => "iotedge_config_cli tool",
        Format::AzDevicesConfig => "az iot edge devices create command",
    }
}

fn to_yaml(value: &Value) -> String {
    serde_yaml::to_string(value).unwrap_or_default()
}

/// Drops from `section` every key whose value equals the one in `default`.
fn prune(section: &mut Mapping, default: &Value) {
    if let Value::Mapping(default) = default {
        section.retain(|k, v| default.get(k) != Some(v));
    }
}

fn hierarchy_yaml(import: &Import) -> String {
    let Ok(mut doc) = serde_yaml::to_value(&import.hierarchy) else {
        return String::new();
    };
    if let Some(spec) = doc.get_mut("spec").and_then(Value::as_mapping_mut) {
        let defaults = [
            ("policy", serde_yaml::to_value(PolicySpec::default())),
            (
                "certificates",
                serde_yaml::to_value(CertificatesSpec::default()),
            ),
            ("edge", serde_yaml::to_value(EdgeRuntimeSpec::default())),
        ];
        for (key, default) in defaults {
            let Ok(default) = default else { continue };
            if let Some(Value::Mapping(section)) = spec.get_mut(key) {
                prune(section, &default);
                if section.is_empty() {
                    spec.shift_remove(key);
                }
            }
        }
        if spec.get("deploymentMode").and_then(Value::as_str) == Some("Automatic") {
            spec.shift_remove("deploymentMode");
        }
        for (list, key, default) in [
            ("devices", "type", Value::from("Edge")),
            ("deployments", "layered", Value::from(false)),
        ] {
            if let Some(Value::Sequence(items)) = spec.get_mut(list) {
                for item in items.iter_mut().filter_map(Value::as_mapping_mut) {
                    if item.get(key) == Some(&default) {
                        item.shift_remove(key);
                    }
                }
            }
        }
    }
    to_yaml(&doc)
}

fn config_map_yaml(cm: &DeploymentConfigMap, import: &Import) -> String {
    let hierarchy = import.hierarchy.metadata.name.clone().unwrap_or_default();
    let mut metadata = Mapping::new();
    metadata.insert("name".into(), cm.name.clone().into());
    if let Some(ns) = &import.hierarchy.metadata.namespace {
        metadata.insert("namespace".into(), ns.clone().into());
    }
    let mut labels = Mapping::new();
    labels.insert("app.kubernetes.io/part-of".into(), hierarchy.into());
    metadata.insert("labels".into(), labels.into());
    let mut data = Mapping::new();
    data.insert(cm.key.clone().into(), cm.text.clone().into());
    let mut doc = Mapping::new();
    doc.insert("apiVersion".into(), "v1".into());
    doc.insert("kind".into(), "ConfigMap".into());
    doc.insert("metadata".into(), metadata.into());
    doc.insert("data".into(), data.into());
    to_yaml(&Value::Mapping(doc))
}
