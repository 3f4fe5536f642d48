//! `README.md`: what the bundle is and how to install it, for the person at the device.

use super::text::{comment_text, shell_word};
use super::{BundleInput, CERT_DIR, DeviceAuth, SECRET_DIR, TRUST_BUNDLE_FILE};

/// Renders the device's README.
pub fn render_readme(input: &BundleInput) -> String {
    let mut out = String::new();
    overview(input, &mut out);
    install(&mut out);
    files(input, &mut out);
    network(input, &mut out);
    renewal(input, &mut out);
    out
}

/// The title and the table of what the device is.
fn overview(input: &BundleInput, out: &mut String) {
    let id = comment_text(&input.device_id);
    let hierarchy = comment_text(&input.hierarchy);

    out.push_str(&format!("# IoT Edge device `{id}`\n\n"));
    out.push_str(&format!(
        "This bundle configures the IoT Edge device `{id}` of the hierarchy `{hierarchy}` \
         (namespace `{}`). It was written by edge-hierarchy-operator, which keeps the device's \
         identity in IoT Hub, its certificates and this bundle up to date.\n\n",
        comment_text(&input.namespace)
    ));

    out.push_str("| | |\n|---|---|\n");
    out.push_str(&format!("| IoT Hub | `{}` |\n", input.hub_hostname));
    match &input.parent_device_id {
        None => out.push_str(&format!("| Layer | {} (top layer) |\n", input.layer)),
        Some(parent) => {
            out.push_str(&format!("| Layer | {} |\n", input.layer));
            out.push_str(&format!("| Parent device | `{}` |\n", comment_text(parent)));
        }
    }
    out.push_str(&format!(
        "| Hostname | {} |\n",
        known_or_asked(input.hostname.as_deref())
    ));
    if !input.is_top_layer() {
        out.push_str(&format!(
            "| Parent hostname | {} |\n",
            known_or_asked(input.parent_hostname.as_deref())
        ));
    }
    let auth = match input.auth {
        DeviceAuth::SymmetricKey { .. } => "symmetric key (in `config.toml`)",
        DeviceAuth::X509 { .. } => "X.509 certificate (thumbprint registered in IoT Hub)",
    };
    out.push_str(&format!("| Authentication | {auth} |\n"));
    out.push_str(&format!("| Edge agent image | `{}` |\n", input.agent_image));
    out.push_str(&format!(
        "| Edge CA valid until | {} |\n\n",
        input.edge_ca.not_after
    ));
}

fn install(out: &mut String) {
    out.push_str("## Install\n\n");
    out.push_str(
        "Prerequisites: IoT Edge 1.4 or later (`aziot-edge`) and a container engine on \
         Debian/Ubuntu, CBL-Mariner/EFLOW/Azure Linux or a RHEL-family system.\n\n",
    );
    out.push_str("Copy the bundle to the device, unpack it, and run the script as root:\n\n");
    out.push_str("```sh\nsudo sh ./install.sh\n```\n\n");
    out.push_str(
        "It asks for the hostnames the hierarchy does not know; without a terminal, set \
         `IOTEDGE_HOSTNAME` (and `IOTEDGE_PARENT_HOSTNAME` below the top layer) instead. \
         Running it again is safe.\n\n",
    );
    out.push_str("The script\n\n");
    out.push_str(&format!(
        "1. copies the certificates to `{CERT_DIR}` (owner `aziotcs`, mode 0644) and the keys to \
         `{SECRET_DIR}` (owner `aziotks`, mode 0600);\n"
    ));
    out.push_str(
        "2. adds the root CA to the OS trust store, so the container engine trusts the parent \
         device when it pulls images through it;\n\
         3. installs `config.toml` as `/etc/aziot/config.toml` (mode 0600; a different previous \
         file is kept as `config.toml.bak`);\n\
         4. when certificates changed, clears the identity service's cached certificates and \
         keys, and recreates edgeAgent and edgeHub so that they use the new ones;\n\
         5. runs `iotedge config apply`.\n\n",
    );
}

fn files(input: &BundleInput, out: &mut String) {
    let names = input.files();
    out.push_str("## Files\n\n| File | Purpose |\n|---|---|\n");
    out.push_str("| `config.toml` | IoT Edge configuration; holds the IoT Hub credentials |\n");
    out.push_str("| `install.sh` | installs this bundle |\n");
    out.push_str(&format!(
        "| `{TRUST_BUNDLE_FILE}` | root CA certificate(s) every device of the hierarchy trusts |\n"
    ));
    out.push_str(&format!(
        "| `{}` | this device's edge CA certificate |\n",
        names.edge_ca_cert
    ));
    out.push_str(&format!(
        "| `{}` | edge CA certificate followed by the root CA |\n",
        names.edge_ca_full_chain
    ));
    out.push_str(&format!(
        "| `{}` | edge CA private key: keep it secret |\n",
        names.edge_ca_key
    ));
    if let DeviceAuth::X509 { .. } = input.auth {
        out.push_str(&format!(
            "| `{}` | IoT Hub identity certificate |\n",
            names.identity_cert
        ));
        out.push_str(&format!(
            "| `{}` | IoT Hub identity private key: keep it secret |\n",
            names.identity_key
        ));
    }
    out.push('\n');
}

fn network(input: &BundleInput, out: &mut String) {
    out.push_str("## Network\n\n");
    if input.is_top_layer() {
        out.push_str(
            "This top-layer device reaches IoT Hub on ports 443 and 5671 and the container \
             registry on port 443. Its children connect to it on ports 443, 5671 and 8883.\n\n",
        );
    } else {
        out.push_str(&format!(
            "This device talks only to its parent: it reaches IoT Hub through the parent's edgeHub \
             (port 5671, or 8883 for MQTT) and pulls images as `$upstream:{port}/...` through the \
             parent's API proxy module on port {port}. Children of this device connect to it the \
             same way.\n\n",
            port = input.upstream_port
        ));
    }
}

fn renewal(input: &BundleInput, out: &mut String) {
    let names = input.files();
    let id = comment_text(&input.device_id);
    let hierarchy = comment_text(&input.hierarchy);
    out.push_str("## Renewal\n\n");
    out.push_str(&format!(
        "The operator renews the certificates before they expire. Download the new bundle and \
         run `install.sh` again:\n\n```sh\nkubectl edgehierarchy bundle {} {} -n {} -o {}.zip\n```\n",
        shell_word(&hierarchy),
        shell_word(&id),
        shell_word(&comment_text(&input.namespace)),
        names.edge_ca_key.trim_end_matches(".key.pem")
    ));
}

fn known_or_asked(value: Option<&str>) -> String {
    match value {
        Some(value) => format!("`{value}`"),
        None => "asked for by `install.sh`".to_string(),
    }
}
