#!/bin/sh
# install.sh for IoT Edge device 'lower-layer' (hierarchy 'tutorial', layer 2, parent 'top-layer').
# Written by edge-hierarchy-operator. Run it as root from the unpacked bundle:
#     sudo sh ./install.sh
# Running it again is safe, also after it stopped halfway: each change is recorded as pending
# before it is made, and what follows it (clearing the identity service's caches, recreating
# edgeAgent and edgeHub) runs until a run has finished. After a certificate renewal, unpack the
# new bundle and run it again.
# Without a terminal, set IOTEDGE_HOSTNAME (and IOTEDGE_PARENT_HOSTNAME below the top layer)
# for the hostnames the hierarchy does not know.
set -eu

device_id='lower-layer'
# Hostnames from the hierarchy; empty ones are asked for.
known_hostname='10.0.0.5'
known_parent_hostname='10.0.0.4'
has_parent=yes
upstream_port=443
agent_tag='1.5'
trust_bundle='iotedge_config_cli_root.pem'

bundle_dir=$(cd "$(dirname "$0")" && pwd)
config_file=/etc/aziot/config.toml
cert_dir=/var/aziot/certs
secret_dir=/var/aziot/secrets
# The container engine trusts the root only for the parent's registry (not system-wide).
docker_certs_dir=/etc/docker/certs.d
# What a run still has to finish; kept until the last step succeeded.
state_dir=/var/lib/edge-hierarchy-operator
restart_pending=$state_dir/restart-pending
os_trust_pending=$state_dir/os-trust-refresh-pending
registry_trust_record=$state_dir/registry-trust-dirs
# Earlier versions of this script added the root to the OS trust store; it is removed from there.
legacy_os_ca_name=iotedge_config_cli_root.pem.crt

say() {
    printf '%s\n' "$*"
}

fail() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

step() {
    say "==> $*"
}

if [ "$(id -u)" -ne 0 ]; then
    fail "run this script as root: sudo sh $0"
fi

step "checking prerequisites"
# The OS family tells how IoT Edge is installed and where earlier versions of this script put
# the root CA.
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
        legacy_os_ca_file=/usr/local/share/ca-certificates/$legacy_os_ca_name
        refresh_os_trust=update-ca-certificates
        install_hint="add the packages.microsoft.com repository for your release, then run: apt-get update && apt-get install aziot-edge"
        ;;
    mariner)
        legacy_os_ca_file=/etc/pki/ca-trust/source/anchors/$legacy_os_ca_name
        refresh_os_trust=update-ca-trust
        install_hint="run: tdnf install aziot-edge (EFLOW ships it installed)"
        ;;
    rhel)
        legacy_os_ca_file=/etc/pki/ca-trust/source/anchors/$legacy_os_ca_name
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
if ! command -v awk >/dev/null 2>&1; then
    fail "awk is missing; it merges this bundle's config.toml into $config_file (install gawk, mawk or busybox)"
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

step "hostnames"
previous_hostname=$(installed_value hostname)
hostname_value=$(ask_hostname "$known_hostname" "${IOTEDGE_HOSTNAME:-}" "$previous_hostname" "the hostname of this device")
parent_hostname_value=
if [ "$has_parent" = yes ]; then
    parent_hostname_value=$(ask_hostname "$known_parent_hostname" "${IOTEDGE_PARENT_HOSTNAME:-}" "$(installed_value parent_hostname)" "the hostname of the parent device")
fi

staged_config=$(mktemp)
merged_config=$(mktemp)
trap 'rm -f "$staged_config" "$merged_config"' EXIT
sed -e "s|{{HOSTNAME}}|$hostname_value|g" -e "s|{{PARENT_HOSTNAME}}|$parent_hostname_value|g" \
    "$bundle_dir/config.toml" >"$staged_config"

step "merging config.toml into $config_file"
# The bundle's keys win; the user's other keys and tables (proxy, [agent.env], PKCS#11...) stay.
installed_config=/dev/null
if [ -f "$config_file" ]; then
    installed_config=$config_file
fi
if ! awk -f "$bundle_dir/merge-config.awk" "$staged_config" "$installed_config" >"$merged_config"; then
    fail "cannot merge the bundle's config.toml into $config_file (see the line named above); fix that file or move it away, then run this script again"
fi

# Whatever follows a change (cached certificates cleared, edgeAgent and edgeHub recreated) is
# recorded before the change is made and done until a run finishes.
mkdir -p "$state_dir"
mark_restart() {
    if [ ! -f "$restart_pending" ]; then
        touch "$restart_pending"
    fi
}
if [ -n "$previous_hostname" ] && [ "$previous_hostname" != "$hostname_value" ]; then
    mark_restart
fi

step "certificates and keys"
# Certificates for the Certificates Service (aziotcs), keys for the Keys Service (aziotks).
# install_file NAME DIRECTORY OWNER MODE
install_file() {
    if ! cmp -s "$bundle_dir/$1" "$2/$1"; then
        mark_restart
    fi
    install -o "$3" -g "$3" -m "$4" "$bundle_dir/$1" "$2/$1"
}
install -d -m 0755 /var/aziot
install -d -o aziotcs -g aziotcs -m 0755 "$cert_dir"
install -d -o aziotks -g aziotks -m 0700 "$secret_dir"
install_file 'iotedge_config_cli_root.pem' "$cert_dir" aziotcs 0644
install_file 'lower-layer.full-chain.cert.pem' "$cert_dir" aziotcs 0644
install_file 'lower-layer.key.pem' "$secret_dir" aziotks 0600
install_file 'lower-layer.hub-auth.cert.pem' "$cert_dir" aziotcs 0644
install_file 'lower-layer.hub-auth.key.pem' "$secret_dir" aziotks 0600

step "trusting the root CA for the parent's registry"
# The container engine pulls $upstream images from the parent over TLS; it gets the root for
# that registry alone (Docker reads certs.d on every pull, no restart needed). Modules trust it
# through aziot's trust bundle (trust_bundle_cert in config.toml).
registry_dirs=
if [ "$has_parent" = yes ]; then
    registry_dirs="$parent_hostname_value:$upstream_port"
    if [ "$upstream_port" = 443 ]; then
        registry_dirs="$registry_dirs $parent_hostname_value"
    fi
fi
if [ -f "$registry_trust_record" ]; then
    while read -r old_dir; do
        case " $registry_dirs " in
            *" $old_dir "*) ;;
            *) if [ -n "$old_dir" ]; then rm -rf "${docker_certs_dir:?}/$old_dir"; fi ;;
        esac
    done <"$registry_trust_record"
fi
for dir in $registry_dirs; do
    install -d -m 0755 "$docker_certs_dir/$dir"
    install -m 0644 "$bundle_dir/$trust_bundle" "$docker_certs_dir/$dir/ca.crt"
done
# shellcheck disable=SC2086 # one line per directory
printf '%s\n' $registry_dirs >"$registry_trust_record.new"
mv -f "$registry_trust_record.new" "$registry_trust_record"
if [ -f "$legacy_os_ca_file" ]; then
    touch "$os_trust_pending"
    rm -f "$legacy_os_ca_file"
fi
if [ -f "$os_trust_pending" ]; then
    say "Removing the root CA an earlier install.sh added to the OS trust store"
    "$refresh_os_trust" >/dev/null
    # The engine read the OS trust store when it started.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl restart docker || fail "could not restart docker; check the container engine, then run this script again"
    fi
    rm -f "$os_trust_pending"
fi

step "installing $config_file"
if [ -f "$config_file" ] && ! cmp -s "$merged_config" "$config_file"; then
    cp -p "$config_file" "$config_file.bak"
    say "Kept the previous configuration as $config_file.bak"
fi
install -d -m 0755 /etc/aziot
# Written beside and renamed, so the file is never missing or half written.
install -o root -g root -m 0600 "$merged_config" "$config_file.new"
mv -f "$config_file.new" "$config_file"

if [ -f "$restart_pending" ]; then
    step "clearing cached certificates and recreating edgeAgent and edgeHub"
    # The identity service caches certificates and keys; stale copies would outlive the new ones.
    rm -rf /var/lib/aziot/certd/certs /var/lib/aziot/keyd/keys
    if command -v docker >/dev/null 2>&1; then
        # edgeAgent and edgeHub keep the old hostname and server certificate until they are
        # created again; edgeAgent is started by the runtime and creates edgeHub.
        if ! docker rm -f edgeAgent edgeHub >/dev/null 2>&1; then
            # `rm -f` also fails when a container does not exist; one still there is an error.
            for container in edgeAgent edgeHub; do
                if docker inspect "$container" >/dev/null 2>&1; then
                    fail "could not remove the $container container; check the container engine, then run this script again"
                fi
            done
        fi
    fi
fi

step "applying the configuration"
iotedge config apply -c "$config_file"
rm -f "$restart_pending"

say "Device '$device_id' is configured. Check it with:"
say "    sudo iotedge system status"
if [ "$has_parent" = yes ]; then
    say "    sudo iotedge check --diagnostics-image-name $parent_hostname_value:$upstream_port/azureiotedge-diagnostics:$agent_tag"
else
    say "    sudo iotedge check"
fi
