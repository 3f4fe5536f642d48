//! install.sh stopped at each step, then run again, ends in the same state as one clean run.
//!
//! Each run happens in a private mount namespace whose /etc, /var and /usr/local/share are copies
//! in a temporary directory (needs root and `unshare` from util-linux, as the bundle_files
//! tests). Every command the script changes the machine with (install, cp, mv, rm, mkdir, touch,
//! awk, sed, cmp, mktemp, iotedge, docker, systemctl, update-ca-certificates) is reached through
//! a wrapper that counts calls and fails the Nth, as a full disk or a killed process would stop
//! it. A clean run from the same starting machine gives the expected tree; for each N the
//! stopped run plus one plain rerun must give exactly that tree (contents, owners, modes), and
//! the stand-ins' effects (configuration applied, containers removed, OS trust refreshed).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use edge_hierarchy_operator::bundle::{BundleFile, BundleInput, DeviceAuth, bundle_files};
use edge_hierarchy_operator::pki::{IssuedCertificate, PrivateKey};

/// Commands wrapped with fault injection; the rest (id, head, tr, dirname) only read.
const WRAPPED: &[&str] = &[
    "install", "cp", "mv", "rm", "mkdir", "touch", "awk", "sed", "cmp", "mktemp",
];

/// The user's own configuration on the device before the bundle arrives: a proxy, PKCS#11 and a
/// principal the merge must keep, and keys of an older setup the bundle replaces.
const USER_CONFIG: &str = r#"# Set up by hand before the hierarchy existed.
hostname = "10.0.0.5"
parent_hostname = "old-parent"

[provisioning]
source = "manual"
connection_string = "HostName=old;DeviceId=lower-layer;SharedAccessKey=b2xk"

[aziot_keys]
pkcs11_lib_path = "/usr/lib/libcryptoki.so"
pkcs11_base_slot = "pkcs11:slot-id=0?pin-value=1234"

[agent]
name = "edgeAgent"
type = "docker"

[agent.config]
image = "mcr.microsoft.com/azureiotedge-agent:1.4"

# Our proxy.
[agent.env]
https_proxy = "http://proxy.factory:3128"

[[principal]]
uid = 1001
name = "monitor"
"#;

fn pem(label: &str, text: &str) -> String {
    pem::encode_config(
        &pem::Pem::new(label, text.as_bytes().to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn certificate(name: &str) -> IssuedCertificate {
    let cert_pem = pem("CERTIFICATE", &format!("placeholder certificate {name}"));
    IssuedCertificate {
        chain_pem: format!("{cert_pem}{}", pem("CERTIFICATE", "placeholder root")),
        cert_pem,
        key: PrivateKey::from_pem(&pem("PRIVATE KEY", &format!("placeholder key {name}"))).unwrap(),
        not_before: "2025-01-01T00:00:00Z".parse().unwrap(),
        not_after: "2025-03-31T00:00:00Z".parse().unwrap(),
        sha256_thumbprint: "0".repeat(64),
    }
}

fn lower_layer() -> Vec<BundleFile> {
    bundle_files(&BundleInput {
        hierarchy: "tutorial".into(),
        namespace: "iot".into(),
        hub_hostname: "my-hub.azure-devices.net".into(),
        device_id: "lower-layer".into(),
        layer: 2,
        parent_device_id: Some("top-layer".into()),
        hostname: None,
        parent_hostname: None,
        auth: DeviceAuth::SymmetricKey {
            shared_access_key: "bmV3LWtleQ==".into(),
        },
        trust_bundle: vec![pem("CERTIFICATE", "placeholder root")],
        edge_ca: certificate("lower-layer edge CA"),
        agent_image: "$upstream:443/azureiotedge-agent:1.5".into(),
        upstream_port: 443,
        agent_auth: None,
    })
    .unwrap()
}

fn real_path(program: &str) -> String {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let path = Path::new(dir).join(program);
        if path.exists() {
            return path.display().to_string();
        }
    }
    panic!("{program} is not installed")
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Lines every wrapper and stand-in starts with: count the call, log it, fail the chosen one.
fn fault_prologue(name: &str) -> String {
    format!(
        "#!/bin/sh\n\
         n=$(( $(/bin/cat \"$FAULT_DIR/count\" 2>/dev/null || echo 0) + 1 ))\n\
         printf '%s\\n' \"$n\" >\"$FAULT_DIR/count\"\n\
         printf '%s {name} %s\\n' \"$n\" \"$*\" >>\"$FAULT_DIR/calls\"\n\
         if [ \"$n\" = \"${{FAULT_AT:-0}}\" ]; then\n\
         \x20   echo \"injected fault at call $n: {name} $*\" >&2\n\
         \x20   exit 97\n\
         fi\n"
    )
}

/// A device: the root of its copied /etc, /var and /usr/local/share, stand-ins and wrappers.
struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    /// A device with an older setup: the user's config.toml, the root in the OS trust store
    /// (where earlier bundles put it), a registry trust folder for a former parent, stale
    /// identity caches and running edgeAgent/edgeHub containers.
    fn with_older_setup() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let device = Self { dir };
        let root = device.root();
        common::copy_etc_with_aziot_users(&root);
        // A Debian device, whatever this machine is (os-release is often a symlink).
        let _ = std::fs::remove_file(root.join("etc/os-release"));
        std::fs::write(
            root.join("etc/os-release"),
            "NAME=\"Debian GNU/Linux\"\nID=debian\n",
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(root.join("etc/docker"));
        let _ = std::fs::remove_dir_all(root.join("etc/aziot"));
        for (path, text) in [
            ("etc/aziot/config.toml", USER_CONFIG),
            (
                "share/ca-certificates/iotedge_config_cli_root.pem.crt",
                "old root",
            ),
            ("share/ca-certificates/corporate.crt", "the user's own CA"),
            ("etc/docker/certs.d/old-parent:443/ca.crt", "old root"),
            ("etc/docker/certs.d/users-registry:5000/ca.crt", "kept"),
            (
                "var/lib/edge-hierarchy-operator/registry-trust-dirs",
                "old-parent:443\n",
            ),
            ("var/lib/aziot/certd/certs/stale", "old"),
            ("var/lib/aziot/keyd/keys/stale", "old"),
            ("var/lib/containers/edgeAgent", "running"),
            ("var/lib/containers/edgeHub", "running"),
            ("var/lib/containers/sensor", "running"),
        ] {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let bin = root.join("bin");
        let effects = root.join("effects");
        let fault = root.join("fault");
        for d in [&bin, &effects, &fault] {
            std::fs::create_dir_all(d).unwrap();
        }
        for name in WRAPPED {
            let text = format!("{}exec {} \"$@\"\n", fault_prologue(name), real_path(name));
            write_executable(&bin.join(name), &text);
        }
        let r = root.display();
        // Stand-ins write their effect (overwriting, so a repeated call leaves the same state).
        for (name, effect) in [
            (
                "iotedge",
                format!("/bin/cp \"$4\" {r}/effects/applied-config.toml\n"),
            ),
            (
                "docker",
                format!(
                    "if [ \"$1\" = inspect ]; then [ -e {r}/var/lib/containers/$2 ]; exit; fi\n\
                     if [ \"$1 $2\" = 'rm -f' ]; then shift 2; for c in \"$@\"; do /bin/rm -f {r}/var/lib/containers/$c; done; fi\n"
                ),
            ),
            ("systemctl", format!("echo \"$*\" >{r}/effects/systemctl\n")),
            (
                "update-ca-certificates",
                format!("/bin/ls /usr/local/share/ca-certificates >{r}/effects/os-trust\n"),
            ),
        ] {
            write_executable(
                &bin.join(name),
                &format!("{}{effect}", fault_prologue(name)),
            );
        }
        device
    }

    fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Unpacks `files` and runs install.sh, failing call `fault_at` (0: none). Returns whether
    /// the script succeeded and its output.
    fn run(&self, files: &[BundleFile], fault_at: usize) -> (bool, String) {
        let root = self.root();
        let bundle = root.join("bundle");
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle).unwrap();
        for f in files {
            std::fs::write(bundle.join(&f.path), &f.contents).unwrap();
        }
        std::fs::write(root.join("fault/count"), "0").unwrap();
        std::fs::write(root.join("fault/calls"), "").unwrap();
        let r = root.display();
        let script = format!(
            "set -e\n\
             /bin/mount --bind {r}/etc /etc\n\
             /bin/mount --bind {r}/var /var\n\
             /bin/mount --bind {r}/share /usr/local/share\n\
             exec sh {r}/bundle/install.sh </dev/null\n"
        );
        let out = Command::new("unshare")
            .args(["--mount", "--fork", "sh", "-c", &script])
            .env("PATH", format!("{r}/bin:/usr/sbin:/usr/bin:/sbin:/bin"))
            .env("FAULT_DIR", root.join("fault"))
            .env("FAULT_AT", fault_at.to_string())
            .env("IOTEDGE_HOSTNAME", "10.0.0.5")
            .env("IOTEDGE_PARENT_HOSTNAME", "10.0.0.4")
            .output()
            .expect("unshare (util-linux) must be installed; this test needs root");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The calls the last run made, one `N name args` line each.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.root().join("fault/calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Every file and folder install.sh or its stand-ins may touch: path → owner, group, mode
    /// and contents.
    fn tree(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for top in ["etc/aziot", "etc/docker", "var", "share", "effects"] {
            walk(&self.root(), &self.root().join(top), &mut out);
        }
        out
    }
}

fn walk(root: &Path, path: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let relative = path.strip_prefix(root).unwrap().display().to_string();
    let owner = format!("{}:{} {:o}", meta.uid(), meta.gid(), meta.mode() & 0o7777);
    if meta.is_dir() {
        out.insert(relative, format!("{owner} dir"));
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for entry in entries {
            walk(root, &entry, out);
        }
    } else {
        let contents = std::fs::read(path).unwrap();
        out.insert(
            relative,
            format!("{owner} {}", String::from_utf8_lossy(&contents)),
        );
    }
}

/// The tree of one clean run from the older setup, and the calls it made.
fn clean_run(files: &[BundleFile]) -> (BTreeMap<String, String>, Vec<String>) {
    let device = Device::with_older_setup();
    let (ok, output) = device.run(files, 0);
    assert!(ok, "a clean run failed:\n{output}");
    (device.tree(), device.calls())
}

/// Which step of install.sh a call belongs to, from what it touches.
fn step_of(call: &str) -> &'static str {
    let name = call.split(' ').nth(1).unwrap_or("");
    if name == "awk" {
        "merge"
    } else if call.contains("/var/aziot/") {
        "certificates"
    } else if call.contains("/etc/docker/certs.d")
        || call.contains("registry-trust-dirs")
        || call.contains("ca-certificates")
        || call.contains("os-trust-refresh-pending")
        || name == "update-ca-certificates"
        || name == "systemctl"
    {
        "trust"
    } else if name == "iotedge" || call.contains("restart-pending") && name == "rm" {
        "apply"
    } else if name == "docker" || call.contains("/var/lib/aziot") {
        "restart"
    } else if call.contains("/etc/aziot") {
        "config"
    } else {
        "other"
    }
}

/// Stops the script at each call of `step`, runs it again, and compares with a clean run.
fn stop_in_step_then_rerun(step: &str) {
    let files = lower_layer();
    let (expected, calls) = clean_run(&files);
    let chosen: Vec<(usize, &String)> = calls
        .iter()
        .enumerate()
        .filter(|(_, call)| step_of(call) == step)
        .map(|(i, call)| (i + 1, call))
        .collect();
    assert!(
        !chosen.is_empty(),
        "no call of step {step} in a clean run:\n{}",
        calls.join("\n")
    );
    for (n, call) in chosen {
        let device = Device::with_older_setup();
        let (stopped_ok, stopped_output) = device.run(&files, n);
        let (ok, output) = device.run(&files, 0);
        assert!(
            ok,
            "the rerun after a stop at call {call:?} failed:\n{output}\n(stopped run:\n{stopped_output})"
        );
        let tree = device.tree();
        let differences: Vec<String> = expected
            .keys()
            .chain(tree.keys())
            .filter(|k| expected.get(*k) != tree.get(*k))
            .map(|k| {
                format!(
                    "{k}:\n  clean run: {:?}\n  stopped, then rerun: {:?}",
                    expected.get(k),
                    tree.get(k)
                )
            })
            .collect();
        assert!(
            differences.is_empty(),
            "stopped at call {call:?} (the stopped run {}), then rerun: differs from a clean run:\n{}",
            if stopped_ok { "went on" } else { "failed" },
            differences.join("\n")
        );
        println!(
            "step {step}: stopped at call {call} ({}); rerun ends as a clean run",
            if stopped_ok {
                "the script went on"
            } else {
                "the script stopped"
            }
        );
    }
}

#[test]
fn a_clean_run_merges_config_trusts_the_parent_registry_only_and_clears_caches() {
    let files = lower_layer();
    let (tree, calls) = clean_run(&files);
    let config = &tree["etc/aziot/config.toml"];
    assert!(config.starts_with("0:0 600 "), "{config}");
    let parsed: toml::Table = config["0:0 600 ".len()..].parse().unwrap();
    // The bundle's keys won; the user's proxy, PKCS#11 and principal stayed.
    assert_eq!(parsed["parent_hostname"].as_str(), Some("10.0.0.4"));
    assert_eq!(
        parsed["agent"]["config"]["image"].as_str(),
        Some("$upstream:443/azureiotedge-agent:1.5")
    );
    assert_eq!(
        parsed["provisioning"]["connection_string"].as_str(),
        Some("HostName=my-hub.azure-devices.net;DeviceId=lower-layer;SharedAccessKey=bmV3LWtleQ==")
    );
    assert_eq!(
        parsed["agent"]["env"]["https_proxy"].as_str(),
        Some("http://proxy.factory:3128")
    );
    assert_eq!(
        parsed["aziot_keys"]["pkcs11_lib_path"].as_str(),
        Some("/usr/lib/libcryptoki.so")
    );
    assert_eq!(parsed["principal"][0]["name"].as_str(), Some("monitor"));
    assert!(
        tree["etc/aziot/config.toml.bak"].ends_with(USER_CONFIG),
        "the user's file is kept as config.toml.bak"
    );
    assert_eq!(
        tree["effects/applied-config.toml"]["0:0 644 ".len()..],
        config["0:0 600 ".len()..]
    );
    // The root is trusted for the parent's registry alone; the old parent's folder and the
    // system-wide copy are gone, the user's own CA and registry folder stay.
    let root_pem = pem("CERTIFICATE", "placeholder root");
    for dir in ["10.0.0.4:443", "10.0.0.4"] {
        let ca = &tree[&format!("etc/docker/certs.d/{dir}/ca.crt")];
        assert!(ca.ends_with(&root_pem), "{dir}: {ca}");
    }
    assert!(!tree.contains_key("etc/docker/certs.d/old-parent:443"));
    assert!(tree.contains_key("etc/docker/certs.d/users-registry:5000/ca.crt"));
    assert!(!tree.contains_key("share/ca-certificates/iotedge_config_cli_root.pem.crt"));
    assert!(tree.contains_key("share/ca-certificates/corporate.crt"));
    assert!(tree["effects/os-trust"].ends_with(" corporate.crt\n"));
    assert_eq!(tree["effects/systemctl"], "0:0 644 restart docker\n");
    // Caches cleared, edgeAgent and edgeHub recreated, other containers untouched.
    assert!(!tree.contains_key("var/lib/aziot/certd/certs/stale"));
    assert!(!tree.contains_key("var/lib/aziot/keyd/keys/stale"));
    assert!(!tree.contains_key("var/lib/containers/edgeAgent"));
    assert!(tree.contains_key("var/lib/containers/sensor"));
    assert!(!tree.contains_key("var/lib/edge-hierarchy-operator/restart-pending"));
    for step in [
        "merge",
        "certificates",
        "trust",
        "config",
        "restart",
        "apply",
    ] {
        assert!(
            calls.iter().any(|c| step_of(c) == step),
            "no call of {step}"
        );
    }
    println!("a clean run makes {} calls", calls.len());

    // Run again on the same device: nothing changes, nothing is cleared or recreated.
    let device = Device::with_older_setup();
    assert!(device.run(&files, 0).0);
    std::fs::create_dir_all(device.root().join("var/lib/aziot/certd/certs")).unwrap();
    std::fs::write(
        device.root().join("var/lib/aziot/certd/certs/fresh"),
        "kept",
    )
    .unwrap();
    let before = device.tree();
    let (ok, output) = device.run(&files, 0);
    assert!(ok, "{output}");
    assert_eq!(device.tree(), before);
    assert!(
        !device.calls().iter().any(|c| c.contains(" docker ")),
        "{:?}",
        device.calls()
    );
}

#[test]
fn stopped_while_merging_config_then_rerun_ends_as_one_clean_run() {
    stop_in_step_then_rerun("merge");
}

#[test]
fn stopped_while_installing_certificates_then_rerun_ends_as_one_clean_run() {
    stop_in_step_then_rerun("certificates");
}

#[test]
fn stopped_while_setting_trust_then_rerun_ends_as_one_clean_run() {
    stop_in_step_then_rerun("trust");
}

#[test]
fn stopped_while_installing_config_then_rerun_ends_as_one_clean_run() {
    stop_in_step_then_rerun("config");
}

#[test]
fn stopped_while_clearing_caches_and_containers_then_rerun_ends_as_one_clean_run() {
    stop_in_step_then_rerun("restart");
}

#[test]
fn stopped_while_applying_then_rerun_ends_as_one_clean_run() {
    stop_in_step_then_rerun("apply");
}

#[test]
fn stopped_at_any_other_command_then_rerun_ends_as_one_clean_run() {
    stop_in_step_then_rerun("other");
}
