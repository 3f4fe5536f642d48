#!/bin/sh
# install.sh for IoT Edge device 'lower-layer' (hierarchy 'tutorial', layer 2, parent 'top-layer').
# Written by edge-hierarchy-operator. Run it as root from the unpacked bundle:
#     sudo sh ./install.sh
# Running it again is safe: after a certificate renewal, unpack the new bundle and run it again.
# Without a terminal, set IOTEDGE_HOSTNAME (and IOTEDGE_PARENT_HOSTNAME below the top layer)
# for the hostnames the hierarchy does not know.
set -eu

device_id='lower-layer'
# Hostnames from the hierarchy; empty ones are asked for.
known_hostname=''
known_parent_hostname=''
has_parent=yes
upstream_port=443
agent_tag='1.5'
trust_bundle='iotedge_config_cli_root.pem'

bundle_dir=$(cd "$(dirname "$0")" && pwd)
config_file=/etc/aziot/config.toml
cert_dir=/var/aziot/certs
secret_dir=/var/aziot/secrets
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
install_file 'iotedge_config_cli_root.pem' "$cert_dir" aziotcs 0644
install_file 'lower-layer.full-chain.cert.pem' "$cert_dir" aziotcs 0644
install_file 'lower-layer.key.pem' "$secret_dir" aziotks 0600

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
