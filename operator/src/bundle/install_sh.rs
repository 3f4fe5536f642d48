//! `install.sh`: installs a bundle on the device, safely re-runnable.
//!
//! The script body is the same for every device; only the variables at its top and the list of
//! files to install differ, so every path through it is checked by shellcheck on every bundle.

use super::text::{comment_text, shell_quote};
use super::{BundleInput, CERT_DIR, DeviceAuth, SECRET_DIR, TRUST_BUNDLE_FILE};

/// Renders the device's `install.sh` (POSIX sh, `set -eu`).
pub fn render_install_sh(input: &BundleInput) -> String {
    render_install_sh_with(input, &[])
}

/// [`render_install_sh`] installing `extra` files too: (file, directory variable, owner, mode).
pub(super) fn render_install_sh_with(
    input: &BundleInput,
    extra: &[(String, &'static str, &'static str, &'static str)],
) -> String {
    let names = input.files();
    let mut installs = vec![
        (
            TRUST_BUNDLE_FILE.to_string(),
            "$cert_dir",
            "aziotcs",
            "0644",
        ),
        (
            names.edge_ca_full_chain.clone(),
            "$cert_dir",
            "aziotcs",
            "0644",
        ),
        (names.edge_ca_key.clone(), "$secret_dir", "aziotks", "0600"),
    ];
    if let DeviceAuth::X509 { .. } = input.auth {
        installs.push((names.identity_cert.clone(), "$cert_dir", "aziotcs", "0644"));
        installs.push((names.identity_key.clone(), "$secret_dir", "aziotks", "0600"));
    }
    installs.extend(extra.iter().cloned());
    let install_lines: String = installs
        .iter()
        .map(|(file, dir, owner, mode)| {
            format!(
                "install_file {} \"{dir}\" {owner} {mode}\n",
                shell_quote(file)
            )
        })
        .collect();

    let position = match &input.parent_device_id {
        None => format!("layer {}, top layer", input.layer),
        Some(parent) => format!("layer {}, parent '{}'", input.layer, parent),
    };
    let agent_tag = image_tag(&input.agent_image).unwrap_or("latest");

    let header = comment_text(&format!(
        "# install.sh for IoT Edge device '{}' (hierarchy '{}', {}).",
        input.device_id, input.hierarchy, position
    ));
    fill(
        TEMPLATE,
        &[
            ("HEADER", header),
            ("DEVICE_ID", shell_quote(&input.device_id)),
            (
                "HOSTNAME",
                shell_quote(input.hostname.as_deref().unwrap_or("")),
            ),
            (
                "PARENT_HOSTNAME",
                shell_quote(input.parent_hostname.as_deref().unwrap_or("")),
            ),
            (
                "HAS_PARENT",
                if input.is_top_layer() { "no" } else { "yes" }.to_string(),
            ),
            ("UPSTREAM_PORT", input.upstream_port.to_string()),
            ("AGENT_TAG", shell_quote(agent_tag)),
            ("CERT_DIR", CERT_DIR.to_string()),
            ("SECRET_DIR", SECRET_DIR.to_string()),
            ("TRUST_BUNDLE", shell_quote(TRUST_BUNDLE_FILE)),
            ("INSTALL_FILES", install_lines.trim_end().to_string()),
        ],
    )
}

/// Replaces each `@NAME@` of `template` in one pass, so a value that itself contains `@NAME@`
/// (device ids may contain `@`) is never substituted again.
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() + 512);
    let mut rest = template;
    while let Some(start) = rest.find('@') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let replaced = after.find('@').and_then(|end| {
            let name = &after[..end];
            values
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (value, end))
        });
        match replaced {
            Some((value, end)) => {
                out.push_str(value);
                rest = &after[end + 1..];
            }
            None => {
                out.push('@');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The tag of an image reference (`...:1.5` -> `1.5`), if it has one.
fn image_tag(image: &str) -> Option<&str> {
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    let without_digest = last_segment.split('@').next().unwrap_or(last_segment);
    without_digest
        .split_once(':')
        .map(|(_, tag)| tag)
        .filter(|tag| !tag.is_empty())
}

const TEMPLATE: &str = r#"#!/bin/sh
@HEADER@
# Written by edge-hierarchy-operator. Run it as root from the unpacked bundle:
#     sudo sh ./install.sh
# Running it again is safe: after a certificate renewal, unpack the new bundle and run it again.
# Without a terminal, set IOTEDGE_HOSTNAME (and IOTEDGE_PARENT_HOSTNAME below the top layer)
# for the hostnames the hierarchy does not know.
set -eu

device_id=@DEVICE_ID@
# Hostnames from the hierarchy; empty ones are asked for.
known_hostname=@HOSTNAME@
known_parent_hostname=@PARENT_HOSTNAME@
has_parent=@HAS_PARENT@
upstream_port=@UPSTREAM_PORT@
agent_tag=@AGENT_TAG@
trust_bundle=@TRUST_BUNDLE@

bundle_dir=$(cd "$(dirname "$0")" && pwd)
config_file=/etc/aziot/config.toml
cert_dir=@CERT_DIR@
secret_dir=@SECRET_DIR@
os_ca_name=iotedge_config_cli_root.pem.crt

say() {
    printf '%s\n' "$*"
}

fail() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    fail "run this script as root: sudo sh $0"
fi

# The OS family decides where the root CA goes in the OS trust store (the container engine
# needs it to pull images through the parent) and how IoT Edge is installed.
os_field() {
    if [ -r /etc/os-release ]; then
        sed -n "s/^$1=//p" /etc/os-release | head -n 1 | tr -d '"'
    fi
}
os_id=$(os_field ID)
os_like=$(os_field ID_LIKE)
os_name=$(os_field NAME)
case "$os_name" in
    "Common Base Linux Mariner"* | "Microsoft Azure Linux"*) family=mariner ;;
    *)
        case " $os_id $os_like " in
            *" mariner "* | *" azurelinux "*) family=mariner ;;
            *" debian "* | *" ubuntu "* | *" raspbian "*) family=debian ;;
            *" rhel "* | *" centos "* | *" fedora "* | *" rocky "* | *" almalinux "*) family=rhel ;;
            *) family=unknown ;;
        esac
        ;;
esac
case "$family" in
    debian)
        os_ca_file=/usr/local/share/ca-certificates/$os_ca_name
        refresh_os_trust=update-ca-certificates
        install_hint="add the packages.microsoft.com repository for your release, then run: apt-get update && apt-get install aziot-edge"
        ;;
    mariner)
        os_ca_file=/etc/pki/ca-trust/source/anchors/$os_ca_name
        refresh_os_trust=update-ca-trust
        install_hint="run: tdnf install aziot-edge (EFLOW ships it installed)"
        ;;
    rhel)
        os_ca_file=/etc/pki/ca-trust/source/anchors/$os_ca_name
        refresh_os_trust=update-ca-trust
        install_hint="add the packages.microsoft.com repository for your release, then run: dnf install aziot-edge"
        ;;
    *)
        fail "unsupported OS '${os_name:-unknown}': this script knows Debian/Ubuntu, CBL-Mariner/EFLOW/Azure Linux and RHEL-family systems"
        ;;
esac
say "Installing IoT Edge device '$device_id' on ${os_name:-$os_id} ($family)"

if ! command -v iotedge >/dev/null 2>&1; then
    fail "IoT Edge 1.4 or later is not installed; $install_hint"
fi
for user in aziotcs aziotks; do
    if ! id "$user" >/dev/null 2>&1; then
        fail "user $user is missing, so the IoT Identity Service is not installed completely; $install_hint"
    fi
done

# An FQDN or IP address under 64 characters (IoT Edge's limit), in characters that sed and
# TOML take literally.
valid_hostname() {
    case "$1" in
        '' | *[!A-Za-z0-9.:-]*) return 1 ;;
    esac
    [ "${#1}" -lt 64 ]
}

# The value of a top-level key of the installed config.toml: a re-run offers the last answer.
installed_value() {
    if [ -r "$config_file" ]; then
        sed -n "s/^$1 = \"\\([^\"]*\\)\"\$/\\1/p" "$config_file" | head -n 1
    fi
}

# ask_hostname KNOWN FROM_ENVIRONMENT PREVIOUS WHAT: prints the hostname to use.
ask_hostname() {
    value=$1
    if [ -z "$value" ]; then
        value=$2
    fi
    if [ -z "$value" ] && [ -t 0 ]; then
        if valid_hostname "$3"; then
            printf 'Enter %s (FQDN or IP) [%s]: ' "$4" "$3" >&2
        else
            printf 'Enter %s (FQDN or IP): ' "$4" >&2
        fi
        read -r value || value=
    fi
    if [ -z "$value" ] && valid_hostname "$3"; then
        value=$3
    fi
    if ! valid_hostname "$value"; then
        fail "'$value' is not a usable value for $4: use an FQDN or IP address under 64 characters"
    fi
    printf '%s' "$value"
}

previous_hostname=$(installed_value hostname)
hostname_value=$(ask_hostname "$known_hostname" "${IOTEDGE_HOSTNAME:-}" "$previous_hostname" "the hostname of this device")
parent_hostname_value=
if [ "$has_parent" = yes ]; then
    parent_hostname_value=$(ask_hostname "$known_parent_hostname" "${IOTEDGE_PARENT_HOSTNAME:-}" "$(installed_value parent_hostname)" "the hostname of the parent device")
fi

staged_config=$(mktemp)
trap 'rm -f "$staged_config"' EXIT
sed -e "s|{{HOSTNAME}}|$hostname_value|g" -e "s|{{PARENT_HOSTNAME}}|$parent_hostname_value|g" \
    "$bundle_dir/config.toml" >"$staged_config"

# Certificates for the Certificates Service (aziotcs), keys for the Keys Service (aziotks).
certs_changed=no
# install_file NAME DIRECTORY OWNER MODE
install_file() {
    if ! cmp -s "$bundle_dir/$1" "$2/$1"; then
        certs_changed=yes
    fi
    install -o "$3" -g "$3" -m "$4" "$bundle_dir/$1" "$2/$1"
}
install -d -m 0755 /var/aziot
install -d -o aziotcs -g aziotcs -m 0755 "$cert_dir"
install -d -o aziotks -g aziotks -m 0700 "$secret_dir"
@INSTALL_FILES@

# The OS trust store: the container engine pulls $upstream images from the parent over TLS.
os_trust_changed=no
if ! cmp -s "$bundle_dir/$trust_bundle" "$os_ca_file"; then
    mkdir -p "$(dirname "$os_ca_file")"
    install -m 0644 "$bundle_dir/$trust_bundle" "$os_ca_file"
    "$refresh_os_trust" >/dev/null
    os_trust_changed=yes
fi

if [ -f "$config_file" ] && ! cmp -s "$staged_config" "$config_file"; then
    cp -p "$config_file" "$config_file.bak"
    say "Kept the previous configuration as $config_file.bak"
fi
install -d -m 0755 /etc/aziot
install -o root -g root -m 0600 "$staged_config" "$config_file"

if [ "$certs_changed" = yes ]; then
    # The identity service caches certificates and keys; stale copies would outlive the new ones.
    say "Certificates changed: clearing the cached certificates and keys of the identity service"
    rm -rf /var/lib/aziot/certd/certs /var/lib/aziot/keyd/keys
fi

if [ "$os_trust_changed" = yes ] && command -v systemctl >/dev/null 2>&1; then
    say "Restarting the container engine so that it trusts the root CA"
    systemctl restart docker || say "warning: could not restart docker; restart the container engine yourself"
fi

hostname_changed=no
if [ -n "$previous_hostname" ] && [ "$previous_hostname" != "$hostname_value" ]; then
    hostname_changed=yes
fi
if { [ "$certs_changed" = yes ] || [ "$hostname_changed" = yes ]; } && command -v docker >/dev/null 2>&1; then
    # edgeAgent and edgeHub keep the old hostname and server certificate until they are created
    # again; edgeAgent is started by the runtime and creates edgeHub.
    docker rm -f edgeAgent edgeHub >/dev/null 2>&1 || true
fi

iotedge config apply -c "$config_file"

say "Device '$device_id' is configured. Check it with:"
say "    sudo iotedge system status"
if [ "$has_parent" = yes ]; then
    say "    sudo iotedge check --diagnostics-image-name $parent_hostname_value:$upstream_port/azureiotedge-diagnostics:$agent_tag"
else
    say "    sudo iotedge check"
fi
"#;

#[cfg(test)]
mod tests {
    use super::{fill, image_tag};

    #[test]
    fn fill_substitutes_once() {
        let values = [("A", "x@B@y".to_string()), ("B", "b".to_string())];
        assert_eq!(
            fill("1 @A@ 2 @B@ 3 @C@ a@b", &values),
            "1 x@B@y 2 b 3 @C@ a@b"
        );
    }

    #[test]
    fn image_tags() {
        assert_eq!(
            image_tag("mcr.microsoft.com/azureiotedge-agent:1.5"),
            Some("1.5")
        );
        assert_eq!(
            image_tag("$upstream:443/azureiotedge-agent:1.4"),
            Some("1.4")
        );
        assert_eq!(image_tag("$upstream:443/azureiotedge-agent"), None);
        assert_eq!(image_tag("registry:5000/a/b@sha256:abc"), None);
        assert_eq!(image_tag("agent"), None);
    }
}
