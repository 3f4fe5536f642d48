//! `config.toml` in the aziot-edge 1.4/1.5 format (`/etc/aziot/config.toml`).

use super::est::{EST_AUTO_RENEW, EST_TRUSTED_CA_FILE, EstBundle, est_file_names};
use super::text::{comment_text, toml_string};
use super::{
    BundleInput, CERT_DIR, DeviceAuth, HOSTNAME_PLACEHOLDER, PARENT_HOSTNAME_PLACEHOLDER,
    SECRET_DIR, TRUST_BUNDLE_FILE,
};

/// Renders the device's `config.toml`. Unknown hostnames are written as
/// [`HOSTNAME_PLACEHOLDER`] / [`PARENT_HOSTNAME_PLACEHOLDER`], which `install.sh` replaces;
/// the file is valid TOML either way.
pub fn render_config_toml(input: &BundleInput) -> String {
    render(input, None)
}

pub(super) fn render(input: &BundleInput, est: Option<&EstBundle>) -> String {
    let names = input.files();
    let cert_uri = |file: &str| toml_string(&format!("file://{CERT_DIR}/{file}"));
    let secret_uri = |file: &str| toml_string(&format!("file://{SECRET_DIR}/{file}"));

    let mut out = String::new();
    let position = match &input.parent_device_id {
        None => format!("layer {}, top layer", input.layer),
        Some(parent) => format!("layer {}, parent {}", input.layer, toml_string(parent)),
    };
    out.push_str(&format!(
        "# IoT Edge configuration of device {} (hierarchy {}, {}).\n",
        comment_text(&toml_string(&input.device_id)),
        comment_text(&toml_string(&input.hierarchy)),
        comment_text(&position),
    ));
    out.push_str(
        "# Written by edge-hierarchy-operator for aziot-edge 1.4 and 1.5. install.sh fills in the\n\
         # hostnames it had to ask for and merges these keys into /etc/aziot/config.toml.\n\n",
    );

    // Top-level keys come before the first table.
    let hostname = input.hostname.as_deref().unwrap_or(HOSTNAME_PLACEHOLDER);
    out.push_str(&format!("hostname = {}\n", toml_string(hostname)));
    if !input.is_top_layer() {
        let parent = input
            .parent_hostname
            .as_deref()
            .unwrap_or(PARENT_HOSTNAME_PLACEHOLDER);
        out.push_str(&format!("parent_hostname = {}\n", toml_string(parent)));
    }
    out.push_str(&format!(
        "trust_bundle_cert = {}\n\n",
        cert_uri(TRUST_BUNDLE_FILE)
    ));

    out.push_str("[provisioning]\nsource = \"manual\"\n");
    match &input.auth {
        DeviceAuth::SymmetricKey { shared_access_key } => {
            let connection_string = format!(
                "HostName={};DeviceId={};SharedAccessKey={}",
                input.hub_hostname, input.device_id, shared_access_key
            );
            out.push_str(&format!(
                "connection_string = {}\n\n",
                toml_string(&connection_string)
            ));
        }
        DeviceAuth::X509 { .. } => {
            out.push_str(&format!(
                "iothub_hostname = {}\ndevice_id = {}\n\n",
                toml_string(&input.hub_hostname),
                toml_string(&input.device_id)
            ));
            if est.is_some() {
                // The hub identity is enrolled (and renewed) over EST; the operator registers
                // each new thumbprint before it answers.
                out.push_str(&format!(
                    "[provisioning.authentication]\nmethod = \"x509\"\n\n\
                     [provisioning.authentication.identity_cert]\nmethod = \"est\"\ncommon_name = {}\n\n",
                    toml_string(&input.device_id)
                ));
            } else {
                out.push_str(&format!(
                    "[provisioning.authentication]\nmethod = \"x509\"\nidentity_cert = {}\nidentity_pk = {}\n\n",
                    cert_uri(&names.identity_cert),
                    secret_uri(&names.identity_key)
                ));
            }
        }
    }

    match est {
        None => out.push_str(&format!(
            "[edge_ca]\ncert = {}\npk = {}\n\n",
            cert_uri(&names.edge_ca_full_chain),
            secret_uri(&names.edge_ca_key)
        )),
        Some(est) => out.push_str(&est_sections(input, est)),
    }

    out.push_str("[agent]\nname = \"edgeAgent\"\ntype = \"docker\"\n\n");
    out.push_str(&format!(
        "[agent.config]\nimage = {}\n\n",
        toml_string(&input.agent_image)
    ));
    if let Some(login) = &input.agent_auth {
        // aziot-edged resolves a leading `$upstream` here as in the image.
        out.push_str(&format!(
            "[agent.config.auth]\nserveraddress = {}\nusername = {}\npassword = {}\n\n",
            toml_string(&login.address),
            toml_string(&login.username),
            toml_string(login.password.expose())
        ));
    }

    out.push_str(
        "[connect]\n\
         workload_uri = \"unix:///var/run/iotedge/workload.sock\"\n\
         management_uri = \"unix:///var/run/iotedge/mgmt.sock\"\n\n\
         [listen]\n\
         workload_uri = \"fd://aziot-edged.workload.socket\"\n\
         management_uri = \"fd://aziot-edged.mgmt.socket\"\n\n\
         [moby_runtime]\n\
         uri = \"unix:///var/run/docker.sock\"\n\
         network = \"azure-iot-edge\"\n",
    );
    out
}

/// `[cert_issuance.est]` and an `[edge_ca]` that enrolls over EST (docs/est.md): the device
/// trusts the EST server through the EST CA only, authenticates the first time with its
/// bootstrap identity, and renews its edge CA (CN `<id>.deviceca`, which differs from its
/// hostname and id as IoT Edge requires) itself.
fn est_sections(input: &BundleInput, est: &EstBundle) -> String {
    let (cert, key) = est_file_names(input);
    let cert_uri = |file: &str| toml_string(&format!("file://{CERT_DIR}/{file}"));
    let secret_uri = |file: &str| toml_string(&format!("file://{SECRET_DIR}/{file}"));
    let (threshold, retry) = EST_AUTO_RENEW;
    format!(
        "[cert_issuance.est]\ntrusted_certs = [{}]\n\n\
         [cert_issuance.est.auth]\nbootstrap_identity_cert = {}\nbootstrap_identity_pk = {}\n\n\
         [cert_issuance.est.urls]\ndefault = {}\n\n\
         [edge_ca]\nmethod = \"est\"\ncommon_name = {}\n\n\
         [edge_ca.auto_renew]\nrotate_key = true\nthreshold = {}\nretry = {}\n\n",
        cert_uri(EST_TRUSTED_CA_FILE),
        cert_uri(&cert),
        secret_uri(&key),
        toml_string(&est.url),
        toml_string(&crate::pki::edge_ca_common_name(&input.device_id)),
        toml_string(threshold),
        toml_string(retry),
    )
}
